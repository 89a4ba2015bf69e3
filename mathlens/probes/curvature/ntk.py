"""Empirical neural tangent kernel on a batch (Jacot et al. 2018), its spectrum, alignment and drift.

For outputs ``f(w): (N, C)`` (``output_fn(model, batch)``, e.g. logits at selected positions, one row per
example) with Jacobian ``J = ∂f/∂w: (N·C, n_params)`` (rows ordered example-major, ``(i, c)``):

* ``mode="full"``:  ``K = J Jᵀ: (N·C, N·C)``;
* ``mode="trace"``: ``K_ij = Σ_c ⟨∂f_ic/∂w, ∂f_jc/∂w⟩: (N, N)`` (the trace over outputs).

``J`` comes from ``torch.func.jacrev`` of ``functional_call`` (reverse mode, ``chunk_size`` output rows
at a time); memory is ``N·C·n_params`` numbers, so this is for small models or few outputs. Exact
attention needs no double backward here (first derivatives only), so fused SDPA works.

* :func:`kernel_target_alignment` ``A(K, Y) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F)`` (Cristianini et al. 2002;
  ``center=True``: Cortes et al. 2012 with ``HKH``, ``H = I − 11ᵀ/m``).
* :func:`ntk_change` ``‖K_t − K_0‖_F / ‖K_0‖_F``: ≈ 0 in the lazy (kernel) regime, O(1) when features learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, jacrev

from mathlens.errors import MathlensError
from mathlens.probes.curvature.operators import ParamSpace, _LossModule, eval_mode


@dataclass
class NTKResult:
    """``kernel: (m, m)`` (m = N·C or N), ``eigenvalues`` descending."""

    kernel: torch.Tensor = field(repr=False)
    eigenvalues: list[float]
    mode: str
    n_examples: int
    n_outputs: int

    def to_dict(self) -> dict:
        ev = torch.tensor(self.eigenvalues, dtype=torch.float64).clamp_min(0)
        p = ev / ev.sum() if float(ev.sum()) > 0 else ev
        erank = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())) if float(ev.sum()) > 0 else 0.0
        return {"eigenvalues": self.eigenvalues, "mode": self.mode, "n_examples": self.n_examples,
                "n_outputs": self.n_outputs, "trace": float(sum(self.eigenvalues)), "effective_rank": erank}


def ntk_jacobian(model: nn.Module, output_fn: Callable, batch, chunk_size: int | None = None) -> torch.Tensor:
    """``J: (N, C, n_params)`` of ``output_fn(model, batch): (N, C)`` (or ``(N,)``, then C = 1)."""
    space = ParamSpace(model)
    module = _LossModule(model, output_fn)
    w = space.as_dict(space.get(), "model.", copy=True)

    def f(p):
        out = functional_call(module, p, (batch,))
        if out.dim() == 1:
            out = out[:, None]
        if out.dim() != 2:
            raise MathlensError(f"output_fn must return (N, C) or (N,) outputs, got shape {tuple(out.shape)}")
        return out

    with eval_mode(model):
        jac = jacrev(f, chunk_size=chunk_size)(w)
    N, C = next(iter(jac.values())).shape[:2]
    return torch.cat([jac["model." + n].reshape(N, C, -1) for n in space.names], dim=2)


def empirical_ntk(model: nn.Module, output_fn: Callable, batch, mode: str = "trace",
                  chunk_size: int | None = None) -> NTKResult:
    """Empirical NTK of ``output_fn(model, batch): (N, C)`` at the current parameters (see module doc)."""
    if mode not in ("trace", "full"):
        raise MathlensError(f"unknown NTK mode {mode!r}; choose 'trace' or 'full'")
    J = ntk_jacobian(model, output_fn, batch, chunk_size)  # (N, C, P)
    N, C, _ = J.shape
    if mode == "full":
        Jf = J.reshape(N * C, -1)
        K = Jf @ Jf.T
    else:
        K = torch.einsum("icp,jcp->ij", J, J)
    K = 0.5 * (K + K.T)
    ev = torch.linalg.eigvalsh(K.double()).flip(0)
    return NTKResult(K.detach(), [float(x) for x in ev], mode, N, C)


def _kernel(K) -> torch.Tensor:
    return (K.kernel if isinstance(K, NTKResult) else torch.as_tensor(K)).double()


def kernel_target_alignment(K, Y, center: bool = False) -> float:
    """Alignment of ``K: (m, m)`` with targets ``Y: (m,)`` or ``(m, C)`` (e.g. one-hot): in [−1, 1]."""
    K = _kernel(K)
    Y = torch.as_tensor(Y).double()
    Y = Y[:, None] if Y.dim() == 1 else Y
    if Y.shape[0] != K.shape[0]:
        raise MathlensError(f"targets have {Y.shape[0]} rows but the kernel is {tuple(K.shape)}")
    T = Y @ Y.T
    if center:
        m = K.shape[0]
        H = torch.eye(m, dtype=K.dtype) - 1.0 / m
        K, T = H @ K @ H, H @ T @ H
    denom = float(K.norm() * T.norm())
    if denom == 0:
        raise MathlensError("kernel or target Gram matrix is zero: alignment undefined")
    return float((K * T).sum()) / denom


def ntk_change(K0, K1) -> float:
    """``‖K1 − K0‖_F / ‖K0‖_F`` between two kernels (tensors or :class:`NTKResult`) on the same batch."""
    A, B = _kernel(K0), _kernel(K1)
    if A.shape != B.shape:
        raise MathlensError(f"kernels have different shapes {tuple(A.shape)} and {tuple(B.shape)}")
    n0 = float(A.norm())
    if n0 == 0:
        raise MathlensError("the reference kernel K0 is zero")
    return float((B - A).norm()) / n0
