"""Statistics of attention matrices (THEORY.md §11.2 (2b) low rank, (2c) sparsity, (2d) rank collapse).

Every function takes attention weights ``P: (..., n, n)`` whose rows sum to one (a causal row ``i``
has ``i + 1`` visible keys and exact zeros after them) and is batched over the leading dimensions
(layer, head, batch). Spectral quantities are computed in float64 (from the SVD of float64 ``P``, from the
float64 Gram matrix of lower-precision ``P``: see :func:`singular_values`); row statistics in ``P``'s dtype
(pass float64 for results exact to roundoff).

Low rank (Roy & Vetterli 2007; Linformer, Wang et al. 2020; Eckart–Young):

* ``σ_1 ≥ … ≥ σ_n`` singular values; ``p_i = σ_i / Σ_j σ_j``;
* ``effective_rank(P) = exp(−Σ_i p_i log p_i)`` (0 log 0 = 0);
* ``stable_rank(P) = ‖P‖_F² / ‖P‖_2² = Σ σ_i² / σ_1²``;
* ``cumulative_energy(P)[k-1] = C(k) = Σ_{i≤k} σ_i / Σ_i σ_i``;
* ``rank_for_error(P, eps, norm)``: the smallest ``k`` whose best rank-``k`` approximation has relative
  error ``≤ eps``: Frobenius ``sqrt(Σ_{i>k} σ_i²) / ‖P‖_F`` or spectral ``σ_{k+1} / σ_1``.

Sparsity, per row ``i`` over its ``m_i`` visible keys (``m_i = i + 1`` causal, ``n`` otherwise):

* ``row_entropy`` ``H_i = −Σ_j P_ij log P_ij``; ``normalised_entropy`` ``H_i / log m_i`` (NaN where
  ``m_i = 1``: a single visible key carries no choice);
* ``top_k_mass`` ``Σ_{j ∈ top-k} P_ij``; ``gini`` of the visible entries (0 uniform, (m−1)/m one-hot);
* ``fraction_above`` the share of visible entries with ``P_ij > τ``.

Rank collapse (Dong, Cordonnier & Loukas 2021): ``residual_ratio(u) = ‖u − 1 ūᵀ‖_F / ‖u‖_F``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mathlens.errors import MathlensError


def _square(P: Tensor) -> None:
    if P.dim() < 2 or P.shape[-1] != P.shape[-2]:
        raise MathlensError(f"attention matrices must have shape (..., n, n), got {tuple(P.shape)}")


def _check_tau(tau: float | None) -> None:
    if tau is not None and not tau >= 0:
        raise MathlensError(f"tau must be ≥ 0 (a weight threshold), got {tau}")


def singular_values(P: Tensor) -> Tensor:
    """``P: (..., n, m)`` -> ``σ: (..., min(n, m))`` in float64, descending.

    float64 ``P``: LAPACK's SVD, exact to roundoff. Lower-precision ``P`` (float32 / bf16 / fp16): square roots
    of the eigenvalues of the float64 Gram matrix ``P Pᵀ`` (``Pᵀ P`` if smaller), 1.7–1.9× faster than the SVD
    on this project's CPU for n = 64–256. Each σ then carries an absolute error ≲ √(n ε₆₄) ‖P‖₂ ≈ 1e-7 ‖P‖₂,
    no more than rounding ``P`` to float32 already caused (Weyl: up to ‖δP‖₂ ≈ 6e-8 √n ‖P‖₂).
    """
    if P.dtype == torch.float64:
        return torch.linalg.svdvals(P)
    A = P.to(torch.float64)
    G = A @ A.mT if A.shape[-2] <= A.shape[-1] else A.mT @ A
    return torch.linalg.eigvalsh(G).clamp_min(0).sqrt().flip(-1)


def effective_rank_from_singular_values(s: Tensor) -> Tensor:
    """``s: (..., r)`` singular values -> ``(...,)`` Roy–Vetterli effective rank ``exp(H(s / Σ s))`` (0 for the zero
    matrix, like its rank)."""
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(torch.finfo(s.dtype).tiny)
    return torch.where(total[..., 0] > 0, torch.exp(torch.special.entr(p).sum(-1)), 0.0)  # the zero matrix: rank 0


def effective_rank(P: Tensor) -> Tensor:
    """``P: (..., n, m)`` -> ``(...,)`` effective rank ``exp(−Σ p_i log p_i)``, ``p_i = σ_i/Σσ`` (float64)."""
    return effective_rank_from_singular_values(singular_values(P))


def stable_rank(P: Tensor) -> Tensor:
    """``P: (..., n, m)`` -> ``(...,)`` stable rank ``‖P‖_F² / ‖P‖_2²`` (float64)."""
    s = singular_values(P)
    return (s**2).sum(-1) / (s[..., 0] ** 2).clamp_min(torch.finfo(s.dtype).tiny)


def cumulative_energy(P: Tensor) -> Tensor:
    """``P: (..., n, m)`` -> ``C: (..., r)`` with ``C[k-1] = Σ_{i≤k} σ_i / Σ_i σ_i`` (Linformer's curve)."""
    s = singular_values(P)
    return torch.cumsum(s, -1) / s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)


def rank_for_error(P: Tensor, eps: float, norm: str = "fro") -> Tensor:
    """Smallest ``k`` with relative best-rank-``k`` error ``≤ eps`` (Eckart–Young), ``P: (..., n, m)`` -> ``(...,)``.

    ``norm="fro"``: error ``sqrt(Σ_{i>k} σ_i²) / sqrt(Σ_i σ_i²)``; ``norm="spectral"``: ``σ_{k+1} / σ_1``.
    ``k = 0`` only for the zero matrix.
    """
    return rank_for_error_from_singular_values(singular_values(P), eps, norm)


def rank_for_error_from_singular_values(s: Tensor, eps: float, norm: str = "fro") -> Tensor:
    """:func:`rank_for_error` from descending singular values ``s: (..., r)``."""
    if not 0 <= eps < 1:
        raise MathlensError(f"eps must be in [0, 1), got {eps}")
    if norm == "fro":
        tail = torch.flip(torch.cumsum(torch.flip(s**2, [-1]), -1), [-1])  # tail[k] = Σ_{i≥k} σ_i² (0-based)
        total = tail[..., :1]
        err = torch.cat([tail[..., 1:], torch.zeros_like(tail[..., :1])], -1).sqrt() / total.sqrt().clamp_min(1e-300)
    elif norm == "spectral":
        err = torch.cat([s[..., 1:], torch.zeros_like(s[..., :1])], -1) / s[..., :1].clamp_min(1e-300)
    else:
        raise MathlensError(f"norm must be 'fro' or 'spectral', got {norm!r}")
    # err[k-1] is the error of the rank-k truncation; the first k with err ≤ eps (tiny slack for roundoff).
    ok = err <= eps * (1 + 1e-12) + 1e-15
    k = torch.argmax(ok.to(torch.int8), dim=-1) + 1
    return torch.where(s[..., 0] > 0, k, torch.zeros_like(k))


def visible_counts(n: int, causal: bool, device=None) -> Tensor:
    """``(n,)`` number of keys row ``i`` may attend to: ``i + 1`` (causal) or ``n``."""
    if causal:
        return torch.arange(1, n + 1, device=device)
    return torch.full((n,), n, device=device)


def row_entropy(P: Tensor) -> Tensor:
    """``P: (..., n, n)`` -> ``H: (..., n)``, ``H_i = −Σ_j P_ij log P_ij`` (0 log 0 = 0; one fused ``entr``)."""
    return torch.special.entr(P).sum(-1)


def row_entropy_from_scores(P: Tensor, S: Tensor) -> Tensor:
    """``H: (..., n)`` of ``P = softmax(S)`` from the weights and their scores ``S: (..., n, n)`` (finite: masked
    entries a large negative number, so that ``0 · S`` is 0), without a logarithm per entry.

    ``log P_ij = S_ij − lse_i`` and the largest weight sits at the largest score, so ``lse_i = max_j S_ij −
    log max_j P_ij`` and ``H_i = lse_i − Σ_j P_ij S_ij``: two row maxima and one row dot product, ≈ 2.4× cheaper than
    :func:`row_entropy` on the CPU (0.35 against 0.83 ms for 192 matrices of 64 × 64, whose ``n²`` logarithms
    dominate ``entr``), with the same float32 rounding (≈ 1e-6).
    """
    dot = (P.unsqueeze(-2) @ S.unsqueeze(-1))[..., 0, 0]  # Σ_j P_ij S_ij as a batched matmul: no (..., n, n) temporary
    return S.amax(-1) - torch.log(P.amax(-1)) - dot


def normalised_entropy(P: Tensor, causal: bool = True, H: Tensor | None = None) -> Tensor:
    """``P: (..., n, n)`` -> ``(..., n)``: ``H_i / log m_i`` in [0, 1]; NaN for rows with one visible key.

    ``H``: the row entropies when already computed.
    """
    _square(P)
    m = visible_counts(P.shape[-1], causal, P.device).to(P.dtype)
    logm = torch.log(m)
    H = row_entropy(P) if H is None else H
    return torch.where(m > 1, H / torch.where(m > 1, logm, torch.ones_like(logm)), torch.full_like(H, float("nan")))


def top_k_mass(P: Tensor, k: int) -> Tensor:
    """``P: (..., n, n)`` -> ``(..., n)``: the mass of the ``k`` largest weights in each row."""
    k = min(int(k), P.shape[-1])
    return torch.topk(P, k, dim=-1).values.sum(-1)


def gini(P: Tensor, causal: bool = True, sorted_rows: Tensor | None = None) -> Tensor:
    """``P: (..., n, n)`` -> ``(..., n)`` Gini coefficient of the visible weights of each row.

    ``G = Σ_j (2j − m − 1) x_(j) / (m Σ_j x_j)`` over the ``m`` visible entries sorted ascending
    (``j`` 1-based): 0 for uniform rows, ``(m − 1)/m`` for one-hot rows. Masked causal entries are exact
    zeros, so after an ascending sort the visible entries are the last ``m`` of the row. ``sorted_rows``:
    ``torch.sort(P, -1).values`` when already computed.
    """
    _square(P)
    return _gini_of_sorted(sort_rows(P) if sorted_rows is None else sorted_rows, causal, overwrite=sorted_rows is None)


def _gini_of_sorted(x: Tensor, causal: bool, overwrite: bool) -> Tensor:
    """:func:`gini` from rows ``x: (..., n, n)`` sorted ascending; ``overwrite``: ``x`` may be used as scratch (no
    second ``(..., n, n)`` buffer: on the CPU each fresh one costs page faults)."""
    n = x.shape[-1]
    m = visible_counts(n, causal, x.device).to(x.dtype)[:, None]  # (n_rows, 1)
    pos = torch.arange(n, device=x.device, dtype=x.dtype)[None, :]  # (1, n)
    j = pos - (n - m) + 1
    w = torch.where(j >= 1, 2 * j - m - 1, torch.zeros_like(j))  # (n_rows, n)
    total = x.sum(-1)
    return (x.mul_(w) if overwrite else x * w).sum(-1) / (m[:, 0] * total).clamp_min(1e-300)


def sort_rows(x: Tensor) -> Tensor:
    """``torch.sort(x, -1).values``; on the CPU through NumPy's vectorised sort (x86-simd-sort), several times
    faster than ``torch.sort`` on many short rows (it also skips the indices)."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not x.requires_grad:
        return torch.from_numpy(np.sort(x.contiguous().numpy(), axis=-1))
    return torch.sort(x, dim=-1).values


def sorted_row_statistics(P: Tensor, top_k: int, causal: bool = True, tau: float | None = None) -> tuple[Tensor, ...]:
    """``P: (..., n, n)`` -> ``(top_k_mass, gini)`` or, with ``tau``, ``(top_k_mass, gini, fraction_above)``, each
    ``(..., n)``: :func:`top_k_mass`, :func:`gini` and :func:`fraction_above` from one sort of the rows (the count
    of entries above ``tau`` is a binary search in each sorted row; Gini, last, reuses the sorted copy)."""
    _square(P)
    _check_tau(tau)
    n = P.shape[-1]
    xs = sort_rows(P)
    mass = xs[..., n - min(int(top_k), n):].sum(-1)
    frac = None
    if tau is not None:
        m = visible_counts(n, causal, P.device).to(P.dtype)
        at_most = torch.searchsorted(xs, torch.full((*xs.shape[:-1], 1), float(tau), dtype=xs.dtype, device=xs.device),
                                     right=True)[..., 0]
        frac = (n - at_most).to(P.dtype) / m
    g = _gini_of_sorted(xs, causal, overwrite=True)
    return (mass, g) if frac is None else (mass, g, frac)


def fraction_above(P: Tensor, tau: float, causal: bool = True) -> Tensor:
    """``P: (..., n, n)`` -> ``(..., n)``: share of a row's visible entries with ``P_ij > tau`` (``tau ≥ 0``: the
    masked entries are zeros, so a negative threshold would count them)."""
    _square(P)
    _check_tau(tau)
    m = visible_counts(P.shape[-1], causal, P.device).to(P.dtype)
    return (P > tau).sum(-1) / m


def residual_ratio(u: Tensor) -> Tensor:
    """``u: (..., T, D)`` -> ``(...,)``: ``ρ = ‖u − 1 ūᵀ‖_F / ‖u‖_F`` with ``ū`` the token mean (float64)."""
    u = u.to(torch.float64)
    centred = u - u.mean(-2, keepdim=True)
    return torch.linalg.matrix_norm(centred) / torch.linalg.matrix_norm(u).clamp_min(1e-300)


def rank_collapse_profile(states: list[Tensor]) -> list[float]:
    """``states``: per-layer residual states, each ``(B, T, D)`` -> mean ``ρ_ℓ`` over the batch, per layer.

    One layer at a time: stacking the layers into one float64 tensor was 3–4× slower on the CPU (2.8–3.0 ms against
    0.65–0.70 ms for 5 states of 12 × 64 × 128), the large fresh buffer costing more than the saved calls."""
    return [float(residual_ratio(u).mean()) for u in states]


def nanmean(x: Tensor, dim=None) -> Tensor:
    """Mean ignoring NaN (``torch.nanmean`` over ``dim``; all ``dims`` when None)."""
    return torch.nanmean(x) if dim is None else torch.nanmean(x, dim=dim)
