"""Curvature during training: λ_max and tr H every ``every`` steps, and the edge of stability 2/η.

The trainer calls each callback after every optimizer step as ``callback(step, model, logs)`` and merges
a returned dict into its metrics. For full-batch gradient descent with step size η the quadratic model
is stable while ``λ_max < 2/η``; Cohen et al. 2021 observe that λ_max rises to and hovers at ``2/η``
("edge of stability"). ``eos_ratio = λ_max · η / 2`` is 1 on the edge.

λ_max is computed by a few Lanczos iterations warm-started from the previous top eigenvector (the
curvature direction moves slowly between evaluations), the trace by Hutchinson with a seed that
depends on the step (independent draws at each evaluation, reproducible across runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from mathlens.errors import MathlensError
from mathlens.probes.curvature.algorithms import hutchinson, lanczos
from mathlens.probes.curvature.operators import HessianOperator


class CurvatureTracker:
    """Callable ``(step, model, logs) -> dict | None`` recording Hessian curvature every ``every`` steps.

    Returned keys: ``curvature/lambda_max`` (and ``curvature/lambda_2`` … up to ``k_top``),
    ``curvature/lanczos_matvecs``, ``curvature/trace`` and ``curvature/trace_stderr`` (when
    ``trace_samples > 0``), ``curvature/two_over_lr`` and ``curvature/eos_ratio`` (when the learning
    rate is known: ``lr`` here, else ``logs["lr"]``). ``history`` keeps every returned dict with its step.
    """

    def __init__(self, loss_fn: Callable, batches: Iterable, every: int = 100, k_top: int = 1,
                 trace_samples: int = 0, seed: int = 0, lanczos_iter: int = 20, tol: float = 1e-3,
                 lr: float | None = None, hvp: str = "double_backward", attention: str = "auto"):
        if every < 1 or k_top < 1 or lanczos_iter < k_top:
            raise MathlensError(f"need every >= 1 and 1 <= k_top <= lanczos_iter, got every={every}, "
                                f"k_top={k_top}, lanczos_iter={lanczos_iter}")
        if trace_samples == 1 or trace_samples < 0:
            raise MathlensError(f"trace_samples must be 0 (off) or >= 2, got {trace_samples}")
        self.loss_fn, self.batches = loss_fn, list(batches)
        self.every, self.k_top, self.trace_samples, self.seed = every, k_top, trace_samples, seed
        self.lanczos_iter, self.tol, self.lr, self.hvp, self.attention = lanczos_iter, tol, lr, hvp, attention
        self.v0 = None
        self.history: list[dict] = []

    def __call__(self, step: int, model: nn.Module, logs: dict | None = None) -> dict | None:
        if step % self.every:
            return None
        op = HessianOperator(model, self.loss_fn, self.batches, method=self.hvp, attention=self.attention)
        v0 = self.v0 if self.v0 is not None and self.v0.shape == (op.size,) else None
        res = lanczos(op, k=self.k_top, max_iter=min(self.lanczos_iter, op.size), tol=self.tol,
                      seed=self.seed + step, v0=v0)
        self.v0 = res.eigenvectors[0].detach()
        out = {"curvature/lambda_max": res.eigenvalues[0], "curvature/lanczos_matvecs": res.n_matvecs}
        for i, lam in enumerate(res.eigenvalues[1:], start=2):
            out[f"curvature/lambda_{i}"] = lam
        if self.trace_samples:
            tr = hutchinson(op, self.trace_samples, seed=self.seed + 1_000_003 + step)
            out["curvature/trace"], out["curvature/trace_stderr"] = tr.trace, tr.std_error
        lr = self.lr if self.lr is not None else (logs or {}).get("lr")
        if lr:
            out["curvature/two_over_lr"] = 2.0 / float(lr)
            out["curvature/eos_ratio"] = res.eigenvalues[0] * float(lr) / 2.0
        self.history.append({"step": step, **out})
        return out
