"""Public entry points: Hessian eigenvalues, trace and spectral density of a model's loss.

``loss = mean over batches of loss_fn(model, batch)``; ``loss_fn(model, batch)`` returns a scalar
tensor. ``hvp`` picks the Hessian-vector product (``"double_backward"``, ``"jvp"``,
``"finite_difference"``; see ``operators.py``), ``attention`` how exact products get through fused attention
(``"auto"``; see ``operators.py``). The model is evaluated in eval mode and never modified.

Example (a mathlens GPT)::

    loss_fn = lambda m, b: m(b[0], targets=b[1])[1]
    top_eigenvalues(model, loss_fn, [(x, y)], k=3).eigenvalues   # [λ1 ≥ λ2 ≥ λ3]
    hessian_trace(model, loss_fn, [(x, y)], n_samples=60, method="hutch++").trace
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from mathlens.errors import MathlensError
from mathlens.probes.curvature.algorithms import (
    DensityResult,
    EigenResult,
    TraceResult,
    eigsh_top,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
    slq_density,
)
from mathlens.probes.curvature.operators import HessianOperator

EIG_METHODS = ("lanczos", "power", "eigsh")
TRACE_METHODS = ("hutchinson", "hutch++")


def hessian_operator(model: nn.Module, loss_fn: Callable, batches: Iterable, hvp: str = "double_backward",
                     attention: str = "auto", fd_step: float | None = None,
                     fd_scheme: str = "central") -> HessianOperator:
    """The Hessian of the mean loss at the model's current parameters as a linear operator."""
    return HessianOperator(model, loss_fn, batches, method=hvp, attention=attention, fd_step=fd_step,
                           fd_scheme=fd_scheme)


def top_eigenvalues(model: nn.Module, loss_fn: Callable, batches: Iterable, k: int = 1, method: str = "lanczos",
                    seed: int = 0, max_iter: int | None = None, tol: float | None = None,
                    hvp: str = "double_backward", return_eigenvectors: bool = False,
                    v0: torch.Tensor | None = None, attention: str = "auto") -> EigenResult:
    """Top-``k`` Hessian eigenvalues, ``.eigenvalues`` sorted descending.

    ``method``: ``"lanczos"`` (default; ``tol`` = relative residual, default 1e-6; ``max_iter``
    default ``max(40, 4k)``), ``"power"`` (PyHessian; ``tol`` default 1e-3 on successive estimates,
    ``max_iter`` default 100; converges to the eigenvalues largest in magnitude), ``"eigsh"`` (SciPy).
    ``v0: (n_params,)`` warm start for Lanczos/power. ``.eigenvectors: (k, n_params)`` when asked.
    """
    if method not in EIG_METHODS:
        raise MathlensError(f"unknown eigenvalue method {method!r}; choose one of {EIG_METHODS}")
    t0 = time.perf_counter()
    op = hessian_operator(model, loss_fn, batches, hvp, attention)
    if method == "lanczos":
        res = lanczos(op, k=k, max_iter=max_iter, tol=1e-6 if tol is None else tol, seed=seed, v0=v0,
                      return_eigenvectors=return_eigenvectors)
    elif method == "power":
        res = power_iteration(op, k=k, max_iter=100 if max_iter is None else max_iter,
                              tol=1e-3 if tol is None else tol, seed=seed, v0=v0)
    else:
        res = eigsh_top(op, k=k, tol=1e-6 if tol is None else tol, seed=seed, max_iter=max_iter,
                        return_eigenvectors=return_eigenvectors)
    if not return_eigenvectors:
        res.eigenvectors = None
    res.n_matvecs = op.n_matvecs
    res.wall_time_s = time.perf_counter() - t0
    res.method = f"{method}/{hvp}"
    return res


def hessian_trace(model: nn.Module, loss_fn: Callable, batches: Iterable, n_samples: int = 100, seed: int = 0,
                  method: str = "hutchinson", hvp: str = "double_backward",
                  attention: str = "auto") -> TraceResult:
    """``tr ∇²L`` by Hutchinson (``n_samples`` Rademacher probes) or Hutch++ (``n_samples`` matvecs in all).

    ``.std_error``: the sample standard error (for Hutch++, of its random residual term given the
    sketch).
    """
    if method not in TRACE_METHODS:
        raise MathlensError(f"unknown trace method {method!r}; choose one of {TRACE_METHODS}")
    t0 = time.perf_counter()
    op = hessian_operator(model, loss_fn, batches, hvp, attention)
    res = hutchinson(op, n_samples, seed) if method == "hutchinson" else hutchpp(op, n_samples, seed)
    res.wall_time_s = time.perf_counter() - t0
    return res


def spectral_density(model: nn.Module, loss_fn: Callable, batches: Iterable, n_probes: int = 8,
                     n_iter: int = 50, seed: int = 0, n_grid: int = 1000, sigma_rel: float = 0.01,
                     hvp: str = "double_backward", attention: str = "auto") -> DensityResult:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (``n_probes × n_iter`` HVPs)."""
    t0 = time.perf_counter()
    op = hessian_operator(model, loss_fn, batches, hvp, attention)
    res = slq_density(op, n_probes=n_probes, n_iter=n_iter, seed=seed, n_grid=n_grid, sigma_rel=sigma_rel)
    res.wall_time_s = time.perf_counter() - t0
    return res
