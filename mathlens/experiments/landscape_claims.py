"""Claim 12: training converges to flat minima — λ_max and trace of the Hessian, small vs large batch, and
the symmetry caveat (THEORY §11.2 (3), prediction 18)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from mathlens.experiments.base import Experiment, Outcome, verdict_difference
from mathlens.probes.curvature import CurvatureTracker, hessian_trace, top_eigenvalues
from mathlens.probes.curvature.symmetry import symmetry_check

FRAMEWORK = "Decoder-only LLM framework (abstract), claim 3"


def lm_loss(model, batch):
    x, y = batch
    return model(x, y)[1]


class FlatMinima(Experiment):
    number, key = 12, "flat-minima"
    title = "Flatness at convergence depends on batch size, and λ_max is not invariant to the attention symmetry"
    claim = "Pre-training converges to flat local minima."
    source = f"{FRAMEWORK}; Keskar et al. 2017; Dinh et al. 2017; da Silva et al. 2025"
    prediction = ("Keskar et al.: large-batch training ends sharper — λ_max of the Hessian (Lanczos) is larger after "
                  "training with a large batch (suite: 64–512) than with a small one (8–16) at the same number of steps and "
                  "learning rate "
                  "(difference > 0). Dinh et al.: λ_max changes under W_Q → W_Q R, W_K → W_K R⁻ᵀ while the loss does "
                  "not, so 'flat' needs an invariant measure.")
    method = ("Per seed: train the suite's GPT with the suite's small and large batch; on 2 fixed validation batches compute "
              "λ_max (Lanczos on exact Hessian-vector products, math attention) and tr H (Hutchinson, 8 probes); "
              "for seed 0, λ_max every ~steps/5 through training (CurvatureTracker callback), and a random R "
              "(condition 10) per head applied to recompute loss and λ_max.")
    groups = ("small batch", "large batch")
    probes = ("curvature.top_eigenvalues", "curvature.hessian_trace", "curvature.symmetry_check")

    def run(self, ctx) -> Outcome:
        small, large = ctx.suite.batch_small, ctx.suite.batch_large
        lam, tr, loss = ({small: [], large: []} for _ in range(3))
        for seed in ctx.seeds:
            batches = [ctx.batch("val", 4242 + i, batch_size=8) for i in range(2)]
            for bs in (small, large):
                model, _ = ctx.trained_gpt(seed, batch_size=bs)
                lam[bs].append(float(top_eigenvalues(model, lm_loss, batches, k=1, seed=seed, max_iter=20,
                                                     tol=1e-3).eigenvalues[0]))
                tr[bs].append(float(hessian_trace(model, lm_loss, batches, n_samples=8, seed=seed).trace))
                loss[bs].append(ctx.eval_loss(model))
        ci, verdict, rule = verdict_difference(lam[large], lam[small], ">", what=f"λ_max (batch {large} − batch {small})")
        model, _ = ctx.trained_gpt(ctx.seeds[0], batch_size=small)
        steps = ctx.suite.train_steps
        tracker = CurvatureTracker(lm_loss, [ctx.batch("val", 4242, batch_size=8)], every=max(1, steps // 5), seed=0)
        ctx.train_on(ctx.data(), ctx.seeds[0], batch_size=small, tag="tracked", callbacks=(tracker,))
        track = [(h["step"], h["curvature/lambda_max"], h.get("curvature/two_over_lr")) for h in tracker.history]
        sym = symmetry_check(model, lm_loss, [ctx.batch("val", 4242, batch_size=8)], measures=("loss", "lambda_max"),
                             seed=0, lanczos_iter=20)
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
        ax[0].scatter(lam[small], loss[small], label=f"batch {small}")
        ax[0].scatter(lam[large], loss[large], marker="s", label=f"batch {large}")
        ax[0].set_xlabel("λ_max"), ax[0].set_ylabel("validation loss"), ax[0].legend()
        ax[1].bar(["loss", "λ_max"], [sym.relative_change["loss"], sym.relative_change["lambda_max"]], color="#c05621")
        ax[1].set_yscale("symlog", linthresh=1e-8), ax[1].set_ylabel("relative change under W_Q R, W_K R⁻ᵀ")
        ax[2].plot([t[0] for t in track], [t[1] for t in track], "o-", label="λ_max")
        ax[2].set_xlabel("step (seed 0, small batch)"), ax[2].set_ylabel("λ_max through training"), ax[2].legend()
        fig.tight_layout()
        return Outcome(f"λ_max, batch {large} − batch {small}", ci, verdict, rule,
                       groups={f"{name} batch {bs}": d[bs] for name, d in (("λ_max", lam), ("trace", tr), ("val loss", loss))
                               for bs in (small, large)},
                       numbers={"relative change of loss under the symmetry": sym.relative_change["loss"],
                                "relative change of λ_max under the symmetry": sym.relative_change["lambda_max"],
                                "λ_max through training (step, λ_max, 2/lr), seed 0": track,
                                "mean λ_max small batch": float(np.mean(lam[small])),
                                "mean λ_max large batch": float(np.mean(lam[large]))},
                       figure=ctx.save_figure(fig, self))


EXPERIMENTS = [FlatMinima]
