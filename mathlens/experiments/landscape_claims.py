"""Claim 12: training converges to flat minima — λ_max and trace of the Hessian, small vs large batch, and
the symmetry caveat (THEORY §11.2 (3), prediction 18)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from mathlens.experiments.base import Experiment, Outcome, verdict_difference
from mathlens.probes.curvature import hessian_trace, top_eigenvalues
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
                  "training with batch 128 than with batch 8 at the same number of steps and learning rate "
                  "(difference > 0). Dinh et al.: λ_max changes under W_Q → W_Q R, W_K → W_K R⁻ᵀ while the loss does "
                  "not, so 'flat' needs an invariant measure.")
    method = ("Per seed: train the suite's GPT with batch 8 and batch 128; on 2 fixed validation batches compute "
              "λ_max (Lanczos on exact Hessian-vector products, math attention) and tr H (Hutchinson, 8 probes); "
              "for seed 0, apply a random R (condition 10) per head and recompute loss and λ_max.")
    groups = ("batch 8", "batch 128")
    probes = ("curvature.top_eigenvalues", "curvature.hessian_trace", "curvature.symmetry_check")

    def run(self, ctx) -> Outcome:
        lam = {8: [], 128: []}
        tr = {8: [], 128: []}
        loss = {8: [], 128: []}
        for seed in ctx.seeds:
            batches = [ctx.batch("val", 4242 + i, batch_size=8) for i in range(2)]
            for bs in (8, 128):
                model, _ = ctx.trained_gpt(seed, batch_size=bs)
                lam[bs].append(float(top_eigenvalues(model, lm_loss, batches, k=1, seed=seed, max_iter=20,
                                                     tol=1e-3).eigenvalues[0]))
                tr[bs].append(float(hessian_trace(model, lm_loss, batches, n_samples=8, seed=seed).trace))
                loss[bs].append(ctx.eval_loss(model))
        ci, verdict, rule = verdict_difference(lam[128], lam[8], ">", what="λ_max (batch 128 − batch 8)")
        model, _ = ctx.trained_gpt(ctx.seeds[0], batch_size=8)
        sym = symmetry_check(model, lm_loss, [ctx.batch("val", 4242, batch_size=8)], measures=("loss", "lambda_max"),
                             seed=0, lanczos_iter=20)
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
        ax[0].scatter(lam[8], loss[8], label="batch 8"), ax[0].scatter(lam[128], loss[128], marker="s", label="batch 128")
        ax[0].set_xlabel("λ_max"), ax[0].set_ylabel("validation loss"), ax[0].legend()
        ax[1].bar(["loss", "λ_max"], [sym.relative_change["loss"], sym.relative_change["lambda_max"]], color="#c05621")
        ax[1].set_yscale("symlog", linthresh=1e-8), ax[1].set_ylabel("relative change under W_Q R, W_K R⁻ᵀ")
        fig.tight_layout()
        return Outcome("λ_max, batch 128 − batch 8", ci, verdict, rule,
                       groups={"λ_max batch 8": lam[8], "λ_max batch 128": lam[128], "trace batch 8": tr[8],
                               "trace batch 128": tr[128], "val loss batch 8": loss[8], "val loss batch 128": loss[128]},
                       numbers={"relative change of loss under the symmetry": sym.relative_change["loss"],
                                "relative change of λ_max under the symmetry": sym.relative_change["lambda_max"],
                                "mean λ_max batch 8": float(np.mean(lam[8])), "mean λ_max batch 128": float(np.mean(lam[128]))},
                       figure=ctx.save_figure(fig, self))


EXPERIMENTS = [FlatMinima]
