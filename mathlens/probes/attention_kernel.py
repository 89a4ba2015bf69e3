"""The kernel view of attention (THEORY.md §11.2 (2a), prediction 15).

* Nadaraya–Watson identity (Tsai et al. 2019): ``out_i = Σ_j κ(q_i, k_j) v_j / Σ_j κ(q_i, k_j)`` with
  ``κ(q, k) = exp(scale · q·k)`` over the visible keys, computed here independently of softmax.
* Convex hull: the weights are ≥ 0 and sum to one, so each output row lies in ``conv{v_j}``; checked
  per coordinate, ``min_j v_j ≤ out_i ≤ max_j v_j`` over the visible ``j``.
* Mercer test per head: ``M = W_Q,h W_K,hᵀ`` (``d_model × d_model``). ``exp(xᵀ M y · scale)`` can be a
  Mercer (symmetric positive-definite) kernel only if ``M`` is symmetric positive semi-definite. We report
  ``asym(M) = ‖M − Mᵀ‖_F / ‖M + Mᵀ‖_F`` and the eigenvalues of ``(M + Mᵀ)/2``. Caveats: query/key biases
  add a key-dependent term ``b_qᵀ W_Kᵀ y`` that is not symmetric either; with RoPE, ``M`` is the form at
  relative position 0 (other offsets insert a rotation between ``W_Q`` and ``W_Kᵀ``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


def _repeat_kv(x: Tensor, n_head: int) -> Tensor:
    """``x: (B, Hkv, T, d)`` -> ``(B, n_head, T, d)`` (grouped-query attention: head ``h`` uses ``h // g``)."""
    g = n_head // x.shape[1]
    return x if g == 1 else x.repeat_interleave(g, dim=1)


def _visible(Tq: int, Tk: int, causal: bool, device) -> Tensor:
    """``(Tq, Tk)`` bool: query rows are the LAST ``Tq`` positions of the ``Tk`` keys."""
    if not causal:
        return torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    qpos = torch.arange(Tk - Tq, Tk, device=device)[:, None]
    return torch.arange(Tk, device=device)[None, :] <= qpos


def kernel_weights(q: Tensor, k: Tensor, scale: float, causal: bool = True) -> Tensor:
    """Nadaraya–Watson weights ``κ_ij / Σ_j κ_ij`` with ``κ = exp(scale·q·k − max)``, masked keys weight 0.

    ``q: (B, H, Tq, d)``, ``k: (B, Hkv, Tk, d)`` -> ``(B, H, Tq, Tk)``, in ``q``'s dtype.
    """
    k = _repeat_kv(k, q.shape[1])
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * scale
    vis = _visible(q.shape[-2], k.shape[-2], causal, q.device)
    s = s.masked_fill(~vis, float("-inf"))
    kappa = torch.exp(s - s.amax(-1, keepdim=True))  # exp(-inf) = 0 for masked keys
    return kappa / kappa.sum(-1, keepdim=True)


def nadaraya_watson(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool = True) -> Tensor:
    """``Σ_j κ(q_i,k_j) v_j / Σ_j κ(q_i,k_j)``: ``q (B,H,Tq,d)``, ``k (B,Hkv,Tk,d)``, ``v (B,Hkv,Tk,dv)`` -> ``(B,H,Tq,dv)``."""
    W = kernel_weights(q, k, scale, causal)
    return W @ _repeat_kv(v, q.shape[1])


@dataclass
class KernelSmootherCheck:
    """Residual of the Nadaraya–Watson identity and of the convex-hull property (all ≈ 0 when they hold)."""

    nw_max_residual: float  # max |out − NW(q, k, v)|
    hull_max_violation: float  # max over i, coordinates of distance outside [min_j v_j, max_j v_j]
    weights_min: float  # min weight (≥ 0 for a convex combination)
    weights_sum_max_error: float  # max |Σ_j w_ij − 1|
    scale_of_values: float  # max |v|, to read the residuals against

    def to_dict(self) -> dict:
        return asdict(self)


def kernel_smoother_check(q: Tensor, k: Tensor, v: Tensor, out: Tensor, scale: float,
                          causal: bool = True) -> KernelSmootherCheck:
    """Compare a module's per-head attention output ``out: (B, H, T, dv)`` with the NW formula.

    ``q (B,H,T,d)``, ``k (B,Hkv,T,d)``, ``v (B,Hkv,T,dv)``; computations in float64.
    """
    q, k, v, out = (t.to(torch.float64) for t in (q, k, v, out))
    W = kernel_weights(q, k, scale, causal)
    vv = _repeat_kv(v, q.shape[1])
    nw = W @ vv
    if causal:  # running min/max over the visible prefix j ≤ i
        lo, hi = torch.cummin(vv, dim=-2).values, torch.cummax(vv, dim=-2).values
    else:
        lo, hi = vv.amin(-2, keepdim=True).expand_as(vv), vv.amax(-2, keepdim=True).expand_as(vv)
    viol = torch.clamp(lo - out, min=0) + torch.clamp(out - hi, min=0)
    return KernelSmootherCheck(
        nw_max_residual=float((out - nw).abs().max()),
        hull_max_violation=float(viol.max()),
        weights_min=float(W.min()),
        weights_sum_max_error=float((W.sum(-1) - 1).abs().max()),
        scale_of_values=float(v.abs().max()),
    )


@dataclass
class MercerResult:
    """Mercer test of one head's bilinear form ``M = W_Q,h W_K,hᵀ``."""

    layer: int
    head: int
    asym: float  # ‖M − Mᵀ‖_F / ‖M + Mᵀ‖_F
    lambda_min: float  # of (M + Mᵀ)/2
    lambda_max: float
    frac_negative: float  # share of eigenvalues < −tol·max|λ|
    verdict: str  # "Mercer possible" | "non-Mercer"

    def to_dict(self) -> dict:
        return asdict(self)


def mercer_test(W_q: Tensor, W_k: Tensor, layer: int = 0, head: int = 0, tol: float = 1e-9) -> MercerResult:
    """``W_q, W_k: (d_model, d_head)`` (x ↦ xᵀW maps a state to the head's query/key) -> :class:`MercerResult`.

    Verdict "Mercer possible" only when ``asym ≤ tol`` and ``λ_min ≥ −tol·max|λ|``.
    """
    Wq, Wk = W_q.detach().to(torch.float64), W_k.detach().to(torch.float64)
    M = Wq @ Wk.T
    S = (M + M.T) / 2
    asym = float(torch.linalg.matrix_norm(M - M.T) / torch.linalg.matrix_norm(M + M.T).clamp_min(1e-300))
    lam = torch.linalg.eigvalsh(S)
    big = float(lam.abs().max())
    frac_neg = float((lam < -tol * big).to(torch.float64).mean())
    ok = asym <= tol and float(lam[0]) >= -tol * big
    return MercerResult(layer, head, asym, float(lam[0]), float(lam[-1]), frac_neg,
                        "Mercer possible" if ok else "non-Mercer")
