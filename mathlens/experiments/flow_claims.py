"""Claims 1-7: the continuous formulation of Tai, Liu, Li and Chan (THEORY §2-§7, predictions 1-11)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from mathlens.experiments.base import (
    Experiment,
    Outcome,
    combine_verdicts,
    verdict_above,
    verdict_below,
    verdict_difference,
    verdict_within,
)
from mathlens.flow.convergence import convergence_studies
from mathlens.flow.limits import clustering, literal_confinement
from mathlens.flow.operators import project_s1_distance
from mathlens.flow.studies import block_equivalence
from mathlens.probes.capture import capture

TAI = "Tai, Liu, Li, Chan (arXiv 2510.03989)"


def _post_ln(ctx, seed):
    """A post-norm GPT with the paper's scalar LayerNorm (σ1, σ2) and ε = 0, trained on the corpus."""
    return ctx.trained_gpt(seed, norm_position="post", norm_affine="scalar", norm_eps=0.0)[0]


def _token_sphere_spread(u: torch.Tensor) -> float:
    """How far tokens u: (..., D) are from one common sphere {mean = a, population std = r}:
    max over tokens of (|std − r| + |mean − a|) / r with a, r the medians over tokens."""
    u = u.double().reshape(-1, u.shape[-1])
    m, s = u.mean(-1), u.std(-1, unbiased=False)
    a, r = m.median(), s.median()
    return float(((s - r).abs() + (m - a).abs()).max() / r)


class LieStep(Experiment):
    number, key = 1, "block-is-lie-step"
    title = "A post-LN Transformer block is exactly one Lie splitting step"
    claim = "One step of the sequential operator splitting of the continuous model is one Transformer block."
    source = f"{TAI}, §3-§4.1 eqs. (13)-(17), (29)-(35); THEORY §5.3 and prediction 1"
    prediction = ("With the errata corrected (per-feature bias, no ReLU after the last FFN layer, ε = 0, scalar LN affine, "
                  "W_j^std = I + W_j) one Lie step with dt = 1 equals one Vaswani post-LN block: max |Δ| < 1e-12 in float64. "
                  "Each paper-literal choice then causes its predicted deviation (ReLU on last: O(1); per-token bias: O(1) "
                  "and broken permutation equivariance; average vs sum: 0 at ε = 0; ε > 0: ≈ −3ε/(2β)).")
    method = "Per seed: random θ and u (7 tokens, width 16, 2 heads), block_equivalence in float64."
    groups = ("corrected step", "paper-literal toggles")
    probes = ("flow.studies.block_equivalence",)

    def run(self, ctx) -> Outcome:
        res = [block_equivalence(seed) for seed in ctx.seeds]
        corrected = [max(r.corrected, r.stacked) for r in res]
        ci, verdict, rule = verdict_below(corrected, 1e-12, what="max |Δ| (step vs block)")
        keys = ("corrected", "stacked", "average_vs_sum", "feature_bias_equivariance", "eps_deviation", "relu_on_last",
                "token_bias", "token_bias_equivariance")
        vals = {k: float(np.mean([getattr(r, k) for r in res])) for k in keys}
        fig, ax = plt.subplots(figsize=(7, 3.4))
        ax.barh(list(vals), [max(v, 1e-18) for v in vals.values()], color="#2b6cb0")
        ax.set_xscale("log"), ax.axvline(1e-12, color="k", lw=0.8, ls=":"), ax.set_xlabel("max |Δ| (float64)")
        fig.tight_layout()
        return Outcome("max |Δ| between Lie step and post-LN block", ci, verdict, rule,
                       groups={"corrected": corrected, "relu_on_last": [r.relu_on_last for r in res],
                               "token_bias_equivariance": [r.token_bias_equivariance for r in res]},
                       numbers=vals | {"ε relative change measured": float(np.mean([r.eps_relative_change for r in res])),
                                       "ε relative change predicted −3ε/(2β)": float(np.mean([r.eps_relative_predicted for r in res]))},
                       figure=ctx.save_figure(fig, self))


class LayerNormProjection(Experiment):
    number, key = 2, "layernorm-projection"
    title = "LayerNorm is the Euclidean projection onto S1 — on trained states"
    claim = "LayerNorm is the projection onto the constraint set S1(σ1, σ2) of per-token mean and variance."
    source = f"{TAI}, Theorem 3.1; THEORY §3.1 and prediction 2"
    prediction = ("On the states entering each LayerNorm of a trained post-LN GPT (scalar σ1, σ2, ε = 0): the output lies on "
                  "S1 and ‖LN(v) − v‖² equals the closed form N_y[(σ2 − √β)² + (σ1 − α)²]; the worst relative error is "
                  "below 1e-4 (float32), and no randomly drawn point of S1 is closer than LN(v).")
    method = ("Per seed: train a post-LN GPT with scalar affine and ε = 0; capture v (before) and LN(v) (after) the "
              "attention-step projection of every block on validation text; compare distances; 2,000 random points of S1 "
              "per token for 16 tokens.")
    groups = ("trained post-LN GPT",)
    probes = ("capture", "flow.project_s1_distance")

    def run(self, ctx) -> Outcome:
        errs, closer = [], 0
        for seed in ctx.seeds:
            model = _post_ln(ctx, seed)
            x, _ = ctx.batch("val", 40_000 + seed, batch_size=4)
            hooks, store = [], {}
            for i, b in enumerate(model.blocks):
                hooks.append(b.hook_attn_step.register_forward_hook(lambda m, a, o, i=i, store=store: store.__setitem__(("v", i), o)))
                hooks.append(b.hook_resid_mid.register_forward_hook(lambda m, a, o, i=i, store=store: store.__setitem__(("p", i), o)))
            with torch.no_grad():
                model(x)
            for h in hooks:
                h.remove()
            worst = 0.0
            for i, b in enumerate(model.blocks):
                v, p = store[("v", i)].double(), store[("p", i)].double()
                s1, s2 = b.norm_attn.sigma1.item(), b.norm_attn.sigma2.item()
                d_true = (p - v).pow(2).sum(-1)
                d_formula = project_s1_distance(v, s1, s2)
                worst = max(worst, float(((d_true - d_formula).abs() / d_formula.clamp_min(1e-12)).max()))
                if i == 0:
                    closer += self._random_points_closer(v[0, :16].cpu(), d_true[0, :16].cpu(), s1, s2, seed)
            errs.append(worst)
        ci, verdict, rule = verdict_below(errs, 1e-4, what="relative error of the distance formula")
        if closer:
            verdict, rule = "contradicted", rule + f"; and {closer} random points of S1 were closer than LN(v)"
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.bar([f"seed {s}" for s in ctx.seeds], [max(e, 1e-12) for e in errs], color="#2b6cb0")
        ax.set_yscale("log"), ax.axhline(1e-4, color="k", ls=":", lw=0.8), ax.set_ylabel("max relative error")
        fig.tight_layout()
        return Outcome("max relative error of ‖LN(v) − v‖² vs closed form", ci, verdict, rule, groups={"error": errs},
                       numbers={"random points of S1 closer than LN(v)": closer}, figure=ctx.save_figure(fig, self))

    @staticmethod
    def _random_points_closer(v, d_true, s1, s2, seed, n=2000) -> int:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(v.shape[0], n, v.shape[-1], generator=g, dtype=torch.float64)
        w = z - z.mean(-1, keepdim=True)
        w = s1 + s2 * w / w.std(-1, unbiased=False, keepdim=True)  # uniform on S1(s1, s2) per token
        d = (w - v[:, None, :]).pow(2).sum(-1)
        return int((d < d_true[:, None] * (1 - 1e-9)).sum())


class DepthConvergence(Experiment):
    number, key = 3, "depth-convergence"
    title = "Refining depth converges: order 1 for Lie, 2 for Strang with tangent-projected Heun substeps"
    claim = "The Transformer is a time discretisation of the continuous model; the splitting schemes are first-order accurate."
    source = f"{TAI}, App. C; THEORY §13, predictions 6-7"
    prediction = ("With a smooth control θ(t), the error at T against an RK4 reference of the tangent-projected ODE falls as "
                  "dt^p: p ∈ [0.85, 1.15] for Lie and for Strang with Euler substeps (Strang ordering alone does not raise "
                  "the order), p ∈ [1.85, 2.15] for Strang with tangent-projected Heun substeps.")
    method = ("Per seed: a smooth-in-t ContinuousTransformer (6 tokens, width 12), N_t = 8…64 steps, reference with 128 RK4 "
              "steps; fitted log-log slope. Also: for the trained GPT, the relative change ‖θ^{n+1} − θ^n‖/‖θ^n‖ between "
              "consecutive untied layers (how far trained layers are from a smooth θ(t)).")
    groups = ("Lie", "Strang (Euler substeps)", "Strang (tangent Heun)")
    probes = ("flow.convergence.convergence_study",)

    def run(self, ctx) -> Outcome:
        studies = [convergence_studies(("lie", "strang", "strang_heun"), seed=s) for s in ctx.seeds]
        order = {k: [st[k].order for st in studies] for k in ("lie", "strang", "strang_heun")}
        ci, v1, rule1 = verdict_within(order["lie"], 0.85, 1.15, what="Lie order")
        ci2, v2, rule2 = verdict_within(order["strang"], 0.85, 1.15, what="Strang (Euler substeps) order")
        ci3, v3, rule3 = verdict_within(order["strang_heun"], 1.85, 2.15, what="Strang (tangent Heun) order")
        model = ctx.trained_gpt(ctx.seeds[0])[0]
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for key, lab in (("lie", "Lie"), ("strang", "Strang, Euler"), ("strang_heun", "Strang, tangent Heun")):
            res = studies[0][key]
            ax.loglog(res.dt, res.errors, "o-", label=f"{lab} (p = {res.order:.2f})")
        ax.set_xlabel("dt = T / N_t"), ax.set_ylabel("max |u_N − u_ref|"), ax.legend()
        fig.tight_layout()
        return Outcome("Lie order p", ci, combine_verdicts(v1, v2, v3), f"all three must hold — {rule1}; {rule2}; {rule3}",
                       groups={"Lie order": order["lie"], "Strang (Euler) order": order["strang"],
                               "Strang (tangent Heun) order": order["strang_heun"]},
                       numbers={"Strang (Euler) order CI": [ci2.low, ci2.high],
                                "Strang (tangent Heun) order CI": [ci3.low, ci3.high],
                                "splitting error order (Lie − unsplit)":
                                    float(np.mean([st["lie"].splitting_order for st in studies])),
                                "trained GPT: mean ‖θ^{n+1} − θ^n‖/‖θ^n‖": self._layer_change(model)},
                       figure=ctx.save_figure(fig, self))

    @staticmethod
    def _layer_change(model) -> float:
        ch = []
        for a, b in zip(model.blocks[:-1], model.blocks[1:]):
            for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
                if p.dim() == 2:
                    ch.append((q - p).norm().item() / p.norm().item())
        return float(np.mean(ch)) if ch else float("nan")


class StrangVsLie(Experiment):
    number, key = 4, "strang-vs-lie"
    title = "Strang (Macaron) against Lie ordering, trained at equal parameter count"
    claim = "The splitting scheme is a design choice: Strang–Marchuk (Macaron) splitting improves on Lie splitting."
    source = f"{TAI}, App. C; Lu et al. 2019 (Macaron); THEORY §10, prediction 7"
    prediction = ("At equal parameters (Strang: two FFNs of width 2d; Lie: one of width 4d), equal data and steps, the Strang "
                  "model reaches a lower validation loss (difference Strang − Lie < 0).")
    method = "Per seed: train both pre-norm GPTs on the corpus; validation loss on fixed batches."
    groups = ("Strang", "Lie")
    probes = ("train",)

    def run(self, ctx) -> Outcome:
        d = ctx.suite.n_embd
        lie = [ctx.eval_loss(ctx.trained_gpt(s)[0]) for s in ctx.seeds]
        strang = [ctx.eval_loss(ctx.trained_gpt(s, scheme="strang", d_ff=2 * d)[0]) for s in ctx.seeds]
        n_lie = ctx.trained_gpt(ctx.seeds[0])[0].num_params()
        n_strang = ctx.trained_gpt(ctx.seeds[0], scheme="strang", d_ff=2 * d)[0].num_params()
        ci, verdict, rule = verdict_difference(strang, lie, "<", what="val loss (Strang − Lie)")
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot(ctx.seeds, lie, "o-", label="Lie"), ax.plot(ctx.seeds, strang, "s--", label="Strang (Macaron)")
        ax.set_xlabel("seed"), ax.set_ylabel("validation loss"), ax.legend()
        fig.tight_layout()
        return Outcome("val loss, Strang − Lie", ci, verdict, rule, groups={"Strang": strang, "Lie": lie},
                       numbers={"parameters Lie": n_lie, "parameters Strang": n_strang}, figure=ctx.save_figure(fig, self))


class SphereStates(Experiment):
    number, key = 5, "post-ln-sphere"
    title = "Post-LN states lie on the per-token sphere S1; pre-LN states do not"
    claim = "LayerNorm is a projection onto a constraint set, so every post-LN state lies on S1(σ1, σ2)."
    source = f"{TAI}, eqs. (14), (17); THEORY prediction 9"
    prediction = ("The sphere spread of block outputs (max over tokens of (|std − r| + |mean − a|)/r, a and r the medians) is "
                  "≈ 0 for a trained post-LN GPT and far larger for the trained pre-LN GPT: log10 spread pre − post > 3.")
    method = "Per seed: both trained GPTs, block outputs (hook_resid_post) of every block on validation text."
    groups = ("pre-LN", "post-LN")
    probes = ("capture",)

    def run(self, ctx) -> Outcome:
        pre, post = [], []
        for seed in ctx.seeds:
            x, _ = ctx.batch("val", 50_000 + seed, batch_size=4)
            for model, out in ((ctx.trained_gpt(seed)[0], pre), (_post_ln(ctx, seed), post)):
                c = capture(model, x, what=("resid_post",))
                out.append(max(_token_sphere_spread(u) for u in c.resid_states()[1:]))
        diff = [float(np.log10(a) - np.log10(max(b, 1e-16))) for a, b in zip(pre, post)]
        ci, verdict, rule = verdict_above(diff, 3.0, what="log10 spread (pre − post)")
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.bar(["pre-LN", "post-LN"], [np.mean(pre), max(np.mean(post), 1e-16)], color=["#c05621", "#2b6cb0"])
        ax.set_yscale("log"), ax.set_ylabel("sphere spread of block outputs")
        fig.tight_layout()
        return Outcome("log10 sphere spread, pre − post", ci, verdict, rule, groups={"pre-LN": pre, "post-LN": post},
                       figure=ctx.save_figure(fig, self))


class Clustering(Experiment):
    number, key = 6, "attention-clustering"
    title = "Small-step attention dynamics cluster tokens"
    claim = "With small dt, post-LN attention dynamics are a sphere flow whose tokens cluster (Geshkovski et al.)."
    source = f"{TAI} with dt → 0; Geshkovski, Letrouit, Polyanskiy, Rigollet 2023; THEORY prediction 8"
    prediction = "Mean pairwise cosine similarity of the tokens rises from t = 0 to t = T (difference > 0) and approaches 1."
    method = "Per seed: 8 tokens on S1 (width 8), Q = K = V = I, β = 1, 200 Lie steps to T = 20."
    groups = ("t = T", "t = 0")
    probes = ("flow.limits.clustering",)

    def run(self, ctx) -> Outcome:
        res = [clustering(seed) for seed in ctx.seeds]
        rise = [r.mean_cosine[-1] - r.mean_cosine[0] for r in res]
        ci, verdict, rule = verdict_above(rise, 0.0, what="rise of the mean pairwise cosine")
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for r in res:
            ax.plot(r.times, r.mean_cosine, label=f"seed {r.seed}")
        ax.set_xlabel("t"), ax.set_ylabel("mean pairwise cosine"), ax.legend()
        fig.tight_layout()
        return Outcome("rise of mean pairwise cosine", ci, verdict, rule,
                       groups={"final mean cosine": [r.mean_cosine[-1] for r in res]}, figure=ctx.save_figure(fig, self))


class Confinement(Experiment):
    number, key = 7, "s1-s2-confinement"
    title = "The literal continuous model confines states to S1 ∩ S2 as dt → 0"
    claim = "The continuous model (7) has both constraints, S1 (LayerNorm) and S2 (non-negativity), on the same state."
    source = f"{TAI}, eq. (7); THEORY §2.2 consistency remark, prediction 11"
    prediction = ("Running the paper-literal scheme at fixed T with dt → 0, the most negative entry of u(T) tends to 0⁻ "
                  "at rate ≈ dt: fitted slope of log |min u| against log dt in [0.75, 1.25].")
    method = ("Per seed: literal scheme (ReLU on both FFN layers, average residual, per-token bias), T = 4, "
              "N_t = 4…2048; the rate is asymptotic, so the slope is fitted on the three finest steps (N_t = 512, 1024, "
              "2048); the local slopes between consecutive dt, which rise towards it, are reported beside.")
    groups = ("dt → 0",)
    probes = ("flow.limits.literal_confinement",)

    def run(self, ctx) -> Outcome:
        res = [literal_confinement(seed) for seed in ctx.seeds]
        ci, verdict, rule = verdict_within([r.slope for r in res], 0.75, 1.25, what="slope of log|min u| vs log dt")
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for r in res:
            ax.loglog(r.dt, [max(-m, 1e-16) for m in r.min_entry], "o-", label=f"seed {r.seed}")
        ax.set_xlabel("dt"), ax.set_ylabel("−min u(T)"), ax.legend()
        fig.tight_layout()
        return Outcome("slope of log|min u(T)| on log dt", ci, verdict, rule,
                       groups={"min entry at each dt (seed 0)": res[0].min_entry,
                               "local slope at each dt step (seed 0)": res[0].local_slopes},
                       numbers={"dt": res[0].dt},
                       figure=ctx.save_figure(fig, self))


EXPERIMENTS = [LieStep, LayerNormProjection, DepthConvergence, StrangVsLie, SphereStates, Clustering, Confinement]
