"""Claims 13-14: generalisation against parameters (with a scaling fit), and the geometry of the latent space."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from mathlens.experiments.base import Experiment, Outcome, verdict_below, verdict_difference
from mathlens.probes.capture import capture
from mathlens.probes.geometry import IntrinsicDimension
from mathlens.probes.trajectories import trajectory_curvature
from mathlens.stats import ols_slope
from mathlens.sweep.results import count_params

FRAMEWORK = "Decoder-only LLM framework (abstract)"
WIDTHS = (16, 32, 64)


class Generalisation(Experiment):
    number, key = 13, "generalisation-scaling"
    title = "Validation loss falls as a power of the parameter count; the generalisation gap is measured"
    claim = "A tighter generalisation upper bound quantifies the dependence on parameter count N, sequence length L and data."
    source = f"{FRAMEWORK}, claim 4; Kaplan et al. 2020; Hoffmann et al. 2022; Edelman et al. 2022"
    prediction = ("Any bound must at least reproduce the measured sign of ∂L/∂N: at fixed data and steps, the validation "
                  "loss falls with N — the log-log slope of validation loss against non-embedding parameters is < 0. "
                  "The train/validation gap is reported per width.")
    method = (f"Per seed: train the suite's GPT at widths {WIDTHS} (same depth, data, steps); validation and training "
              "loss on fixed batches; OLS slope of log val loss on log N per seed.")
    groups = tuple(f"width {w}" for w in WIDTHS)
    probes = ("train", "stats.ols_slope")

    def run(self, ctx) -> Outcome:
        slopes, val, gap, N = [], {w: [] for w in WIDTHS}, {w: [] for w in WIDTHS}, {}
        for seed in ctx.seeds:
            for w in WIDTHS:
                model, _ = ctx.trained_gpt(seed, n_embd=w, n_head=4)
                N[w] = count_params(model.config.to_dict())[0]  # Kaplan's N: token and position tables excluded
                v, t = ctx.eval_loss(model, "val"), ctx.eval_loss(model, "train")
                val[w].append(v)
                gap[w].append(v - t)
            slopes.append(float(ols_slope(np.log([N[w] for w in WIDTHS]), np.log([val[w][-1] for w in WIDTHS]))))
        ci, verdict, rule = verdict_below(slopes, 0.0, what="slope d log L / d log N")
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        ax.loglog([N[w] for w in WIDTHS], [np.mean(val[w]) for w in WIDTHS], "o-", label="validation")
        ax.set_xlabel("non-embedding parameters N"), ax.set_ylabel("loss (nats/token)"), ax.legend()
        fig.tight_layout()
        return Outcome("slope d log L_val / d log N", ci, verdict, rule,
                       groups={f"val loss, width {w}": val[w] for w in WIDTHS} | {f"gap, width {w}": gap[w] for w in WIDTHS},
                       numbers={f"N at width {w}": N[w] for w in WIDTHS}, figure=ctx.save_figure(fig, self))


class LatentGeometry(Experiment):
    number, key = 14, "latent-geometry"
    title = "Hidden states are low-dimensional; training straightens token trajectories in depth"
    claim = "The latent space is a low-curvature smooth Riemannian manifold."
    source = f"{FRAMEWORK}, claim 5; Facco et al. 2017 (TwoNN); Hosseini & Fedorenko 2023 (trajectory curvature)"
    prediction = ("(a) The TwoNN intrinsic dimension of every layer is far below the width (ID/d < 0.5). "
                  "(b) Hosseini & Fedorenko: in trained models the mean trajectory curvature falls from the first to "
                  "the last layer more than in the same architecture at random initialisation "
                  "(difference of the changes, trained − random, < 0).")
    method = ("Per seed: trained GPT and 4 random initialisations of the same architecture on the same 64 validation "
              "sequences (the random baseline is the mean of their curvature changes: one random draw's own spread, "
              "about ±0.002 rad, is as large as the effect); residual states after each step; TwoNN ID per layer of "
              "the token states, one per distinct (token, position) pair (at random "
              "initialisation the states of one token at one position barely depend on the context, so repeats form "
              "tight clusters whose spread TwoNN reads instead: ID < 1 after the embedding); curvature "
              "c_t = angle(x_{t+1} − x_{t}, x_{t+2} − x_{t+1}). "
              "With the smollm2 extra (not in the quick suite), the same on SmolLM2-135M vs its random init, the ID "
              "over one state per distinct token (no position embedding is added to its residual stream: rotary "
              "positions act inside attention).")
    groups = ("trained", "random init")
    probes = ("capture", "geometry.IntrinsicDimension", "geometry.trajectory_curvature")
    RANDOM_TWINS = 4

    def run(self, ctx) -> Outcome:
        change = {"trained": [], "random init": []}
        ids, curv = {}, {}
        for seed in ctx.seeds:
            x, _ = ctx.batch("val", 30_000 + seed, batch_size=64)
            # the baseline is the expected random model: its change averaged over RANDOM_TWINS initialisations
            twins = [ctx.random_gpt(seed + 500 + 1000 * j) for j in range(self.RANDOM_TWINS)]
            keep = _distinct_token_positions(x)
            for group, models in (("trained", [ctx.trained_gpt(seed)[0]]), ("random init", twins)):
                changes = []
                for j, model in enumerate(models):
                    states = capture(model, x, what=("resid_post",)).resid_states()
                    c = trajectory_curvature([s.double() for s in states]).mean_curvature
                    changes.append(float(c[-1] - c[1]))
                    if seed == ctx.seeds[0] and j == 0:
                        curv[group] = [float(v) for v in c]
                        ids[group] = [IntrinsicDimension("twonn").fit(u.reshape(-1, u.shape[-1])[keep.to(u.device)]
                                                                      .double()).dimension_ for u in states]
                change[group].append(sum(changes) / len(changes))
        ci, verdict, rule = verdict_difference(change["trained"], change["random init"], "<",
                                               what="curvature change last − first layer (trained − random)")
        width = states[0].shape[-1]
        if max(ids["trained"]) / width >= 0.5 and verdict == "supported":
            verdict, rule = "inconclusive", rule + f"; and part (a) fails: max ID/d = {max(ids['trained']) / width:.2f}"
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        for g, ls in (("trained", "o-"), ("random init", "s--")):
            ax[0].plot(ids[g], ls, label=g)
            ax[1].plot(curv[g], ls, label=g)
        ax[0].set_xlabel("layer (0 = embedding)"), ax[0].set_ylabel("TwoNN ID (seed 0)"), ax[0].legend()
        ax[1].set_xlabel("layer"), ax[1].set_ylabel("mean curvature (rad, seed 0)")
        fig.tight_layout()
        return Outcome("curvature change (trained − random)", ci, verdict, rule, groups=change,
                       numbers={"ID per layer, trained (seed 0)": ids["trained"],
                                "ID per layer, random (seed 0)": ids["random init"], "width d": width}
                       | self._smollm2(ctx),
                       figure=ctx.save_figure(fig, self))


    @staticmethod
    def _smollm2(ctx) -> dict:
        """The same measurements on SmolLM2-135M and its random initialisation (when the extra is installed)."""
        from mathlens.experiments.attention_claims import smollm2_inputs
        from mathlens.probes.attention import random_init

        inputs = smollm2_inputs(ctx)
        if inputs is None:
            return {}
        model, idx = inputs
        out = {}
        for group, m in (("trained", model), ("random init", random_init(model, 0))):
            states = [u.double() for u in capture(m, idx, what=("resid_post",)).resid_states()]
            c = trajectory_curvature(states).mean_curvature
            out[f"SmolLM2-135M curvature change last − first layer, {group}"] = float(c[-1] - c[1])
            # no position embedding is added to the residual stream (rotary positions act inside attention), so at
            # random init repeats of a token stay near-duplicates: one state per distinct token (first occurrence)
            keep = _first_occurrences(idx[0])
            out[f"SmolLM2-135M TwoNN ID per layer, {group}"] = [
                IntrinsicDimension("twonn").fit(u[0][keep.to(u.device)]).dimension_ for u in states[:: max(1, len(states) // 8)]]
        out["SmolLM2-135M width d"] = int(states[0].shape[-1])
        return out


def _first_occurrences(keys: torch.Tensor) -> torch.Tensor:
    """Indices into ``keys.reshape(-1)`` of the first occurrence of each distinct value."""
    return torch.from_numpy(np.unique(keys.reshape(-1).cpu().numpy(), return_index=True)[1])


def _distinct_token_positions(x: torch.Tensor) -> torch.Tensor:
    """Indices into ``x.reshape(-1)`` (x: (B, T) token ids) of the first occurrence of each (token, position) pair."""
    return _first_occurrences(x * x.shape[1] + torch.arange(x.shape[1], device=x.device))


EXPERIMENTS = [Generalisation, LatentGeometry]
