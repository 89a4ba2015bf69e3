"""Loss-landscape slices with filter-normalised random directions (Li, Xu, Taylor, Studer, Goldstein 2018).

A direction ``d`` is drawn per parameter tensor from N(0, I) (seeded) and each *filter* — row
``d[i]`` of a tensor with ≥ 2 dims (an output unit of ``nn.Linear``, an embedding row) — is rescaled
to the norm of the matching filter of the weights: ``d[i] ← d[i] / ‖d[i]‖ · ‖w[i]‖``. One-dimensional
tensors (biases, norm gains) get ``d = 0`` (Li et al.'s ``ignore='biasbn'``) unless
``include_1d=True`` (then ``d ← d/‖d‖·‖w‖``). The slices are ``L(w + α d₁)`` and ``L(w + α d₁ + β d₂)``.

The grid is evaluated ``chunk`` points at a time with ``torch.vmap`` over ``torch.func.functional_call``
(one batched forward per chunk and batch). If vmap fails for a model (randomness such as dropout in
train mode, an op without a batching rule, data-dependent control flow, ...) the evaluation falls back
to a plain loop over grid points; ``.vectorized`` says which path ran. The vmapped path runs attention
through the math SDPA backend (it has batching rules; the fused CPU kernel has none and vmap would loop
over it); the loop keeps the model's own attention. The model is evaluated in eval mode, so dropout is
off either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from mathlens.errors import MathlensError
from mathlens.probes.curvature.operators import ModelLoss, eval_mode


@dataclass
class LandscapeResult:
    """``losses``: ``(len(alphas),)`` for a 1-D slice or ``(len(alphas), len(betas))`` for 2-D."""

    alphas: list[float]
    betas: list[float] | None
    losses: list
    center_loss: float
    vectorized: bool
    wall_time_s: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def filter_normalized_direction(model: nn.Module, seed: int = 0, include_1d: bool = False) -> torch.Tensor:
    """A random direction ``d: (n_params,)`` over the trainable parameters, filter-normalised."""
    g = torch.Generator().manual_seed(int(seed))
    parts = []
    for p in (q for q in model.parameters() if q.requires_grad):
        w = p.detach()
        d = torch.randn(w.shape, generator=g, dtype=torch.float64).to(w.device, w.dtype)
        if w.dim() >= 2:
            wf, df = w.reshape(w.shape[0], -1), d.reshape(d.shape[0], -1)
            d = (df / df.norm(dim=1, keepdim=True).clamp_min(1e-30) * wf.norm(dim=1, keepdim=True)).view_as(w)
        elif include_1d:
            d = d / d.norm().clamp_min(1e-30) * w.norm()
        else:
            d = torch.zeros_like(w)
        parts.append(d.reshape(-1))
    return torch.cat(parts)


def evaluate_points(f: ModelLoss, points: torch.Tensor, chunk: int = 16) -> tuple[np.ndarray, bool]:
    """``L`` at each row of ``points: (n_points, n_params)``; returns ``(losses (n_points,), vectorized)``."""
    if chunk < 1:
        raise MathlensError(f"chunk must be >= 1, got {chunk}")
    space = f.space

    def one(w, batch):
        return functional_call(f.module, space.as_dict(w, "model."), (batch,))

    out = np.zeros(points.shape[0])
    vectorized = True
    with torch.no_grad(), eval_mode(f.model):
        try:  # the math SDPA backend has batching rules; the fused CPU kernel would be looped by vmap
            with sdpa_kernel(SDPBackend.MATH):
                for s in range(0, points.shape[0], chunk):
                    W = points[s: s + chunk]
                    vals = sum(vmap(one, in_dims=(0, None))(W, b) for b in f.batches) / len(f.batches)
                    out[s: s + W.shape[0]] = vals.double().cpu().numpy().reshape(-1)
        except Exception:  # no batching rule, randomness, control flow, ...: fall back to a loop
            vectorized = False
            for i, w in enumerate(points):
                out[i] = float(sum(one(w, b) for b in f.batches)) / len(f.batches)
    return out, vectorized


def _grid(values, name) -> np.ndarray:
    a = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise MathlensError(f"{name} must be a non-empty list of finite numbers")
    return a


def loss_slice_1d(model: nn.Module, loss_fn: Callable, batches: Iterable, alphas=None, seed: int = 0,
                  direction: torch.Tensor | None = None, chunk: int = 16, include_1d: bool = False,
                  vectorize: bool = True) -> LandscapeResult:
    """``L(w + α d)`` for α in ``alphas`` (default 41 points in [−1, 1]); ``d`` filter-normalised unless given."""
    t0 = time.perf_counter()
    f = ModelLoss(model, loss_fn, batches)
    a = _grid(np.linspace(-1, 1, 41) if alphas is None else alphas, "alphas")
    d = filter_normalized_direction(model, seed, include_1d) if direction is None else direction.to(f.w0)
    pts = f.w0[None, :] + torch.as_tensor(a, dtype=f.w0.dtype, device=f.w0.device)[:, None] * d[None, :]
    losses, vec = evaluate_points(f, pts, chunk) if vectorize else _loop(f, pts)
    return LandscapeResult(a.tolist(), None, losses.tolist(), f.value(), vec, time.perf_counter() - t0,
                           {"seed": seed, "include_1d": include_1d, "filter_normalized": direction is None})


def loss_surface_2d(model: nn.Module, loss_fn: Callable, batches: Iterable, alphas=None, betas=None,
                    seed: int = 0, directions: tuple[torch.Tensor, torch.Tensor] | None = None, chunk: int = 16,
                    include_1d: bool = False, vectorize: bool = True) -> LandscapeResult:
    """``L(w + α d₁ + β d₂)`` on the grid ``alphas × betas`` (default 21 × 21 in [−1, 1]²).

    ``d₁, d₂`` are filter-normalised with seeds ``seed`` and ``seed + 1`` unless ``directions`` are given.
    """
    t0 = time.perf_counter()
    f = ModelLoss(model, loss_fn, batches)
    a = _grid(np.linspace(-1, 1, 21) if alphas is None else alphas, "alphas")
    b = _grid(np.linspace(-1, 1, 21) if betas is None else betas, "betas")
    if directions is None:
        d1 = filter_normalized_direction(model, seed, include_1d)
        d2 = filter_normalized_direction(model, seed + 1, include_1d)
    else:
        d1, d2 = (d.to(f.w0) for d in directions)
    A, B = np.meshgrid(a, b, indexing="ij")
    ta = torch.as_tensor(A.reshape(-1), dtype=f.w0.dtype, device=f.w0.device)[:, None]
    tb = torch.as_tensor(B.reshape(-1), dtype=f.w0.dtype, device=f.w0.device)[:, None]
    pts = f.w0[None, :] + ta * d1[None, :] + tb * d2[None, :]
    losses, vec = evaluate_points(f, pts, chunk) if vectorize else _loop(f, pts)
    return LandscapeResult(a.tolist(), b.tolist(), losses.reshape(A.shape).tolist(), f.value(), vec,
                           time.perf_counter() - t0,
                           {"seed": seed, "include_1d": include_1d, "filter_normalized": directions is None})


def _loop(f: ModelLoss, pts: torch.Tensor) -> tuple[np.ndarray, bool]:
    return np.array([f.value(w) for w in pts]), False


def plot_landscape(result: LandscapeResult, kind: str = "contour", title: str | None = None, levels: int = 30):
    """A matplotlib Figure (Agg): a line for 1-D slices; ``kind="contour"`` or ``"surface"`` for 2-D."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5))
    L = np.asarray(result.losses)
    if result.betas is None:
        ax = fig.add_subplot()
        ax.plot(result.alphas, L, "-o", ms=3)
        ax.set_xlabel("α (filter-normalised direction)")
        ax.set_ylabel("loss")
    elif kind == "contour":
        ax = fig.add_subplot()
        cs = ax.contour(result.alphas, result.betas, L.T, levels=levels)
        ax.clabel(cs, inline=True, fontsize=6)
        ax.plot([0], [0], "k+")
        ax.set_xlabel("α (d₁)")
        ax.set_ylabel("β (d₂)")
    elif kind == "surface":
        ax = fig.add_subplot(projection="3d")
        A, B = np.meshgrid(result.alphas, result.betas, indexing="ij")
        ax.plot_surface(A, B, L, cmap="viridis", linewidth=0)
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_zlabel("loss")
    else:
        raise MathlensError(f"unknown plot kind {kind!r}; choose 'contour' or 'surface'")
    if title:
        ax.set_title(title)
    return fig
