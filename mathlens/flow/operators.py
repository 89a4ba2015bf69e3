"""The operators of the continuous Transformer (Tai, Liu, Li, Chan; THEORY §2-§6).

State: ``u: (batch, tokens, features)`` = the field u(x, y, t) sampled at N_x tokens and N_y features.

- :func:`attention_operator`: the non-local integral operator (term I)
      A(u)(x) = ∫ γ(x, x̃; u) V(x̃) dx̃,   γ = Softmax_2(scale · Q(x)·K(x̃)),
  single or multi-head; ``causal=True`` restricts the key domain to {x̃ ≤ x} (a Volterra operator).
- :func:`project_s1`: LayerNorm = Euclidean projection onto S1(σ1, σ2), the per-token sphere
  {mean = σ1, population variance = σ2²} (Theorem 3.1); :func:`project_s1_distance` is the closed form
  of the squared projection distance N_y[(σ2 − √β)² + (σ1 − α)²].
- :func:`project_rms`: RMSNorm = projection onto the sphere {mean of squares = σ²}.
- :func:`project_s2`: ReLU = projection onto the non-negative cone S2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def project_s1(v: Tensor, sigma1=0.0, sigma2=1.0, eps: float = 0.0, weight=None, bias=None) -> Tensor:
    """LayerNorm as the projection of each token ``v[..., :]`` onto S1(sigma1, sigma2).

    v: (..., N_y). ``sigma1``/``sigma2`` are scalars (floats or 0-dim tensors, the paper's controls).
    ``eps > 0`` is practical LayerNorm (no longer an exact projection). ``weight``/``bias`` (N_y,) apply the
    per-feature affine map of standard LayerNorm after the projection (onto S1(0, 1)); then the output
    lies on an affine image of the sphere, not on S1. At eps = 0 the projection is undefined for a
    constant token (β = 0): every point of S1 is equally far.
    """
    n = v.shape[-1]
    if weight is not None or bias is not None:
        return F.layer_norm(v, (n,), weight, bias, eps)
    u = F.layer_norm(v, (n,), None, None, eps)
    return u * sigma2 + sigma1


def project_s1_distance(v: Tensor, sigma1=0.0, sigma2=1.0) -> Tensor:
    """Squared distance from each token of ``v: (..., N_y)`` to S1: N_y[(σ2 − √β)² + (σ1 − α)²]."""
    alpha = v.mean(-1)
    beta = (v - alpha.unsqueeze(-1)).pow(2).mean(-1)
    return v.shape[-1] * ((sigma2 - beta.sqrt()) ** 2 + (sigma1 - alpha) ** 2)


def project_rms(v: Tensor, sigma=1.0, eps: float = 0.0, weight=None) -> Tensor:
    """RMSNorm: projection of each token onto {mean of squares = sigma²}; optional per-feature ``weight``."""
    u = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    return weight * u if weight is not None else u * sigma


def project_s2(v: Tensor) -> Tensor:
    """ReLU = argmin_{w ≥ 0} ‖w − v‖², the pointwise projection onto the non-negative cone S2."""
    return torch.clamp_min(v, 0.0)


def causal_mask(n_query: int, n_key: int, device=None) -> Tensor:
    """Boolean (n_query, n_key) mask, True where key x̃ ≤ query x; queries are the last n_query positions."""
    q = torch.arange(n_key - n_query, n_key, device=device)[:, None]
    k = torch.arange(n_key, device=device)[None, :]
    return k <= q


def attention_weights(q: Tensor, k: Tensor, scale: float, causal: bool, bias: Tensor | None = None) -> Tensor:
    """γ = Softmax_2(scale · q kᵀ + bias), row-stochastic over keys.

    q: (B, H, Tq, d), k: (B, H, Tk, d), bias: broadcastable to (B, H, Tq, Tk) -> (B, H, Tq, Tk).
    With ``causal`` the queries are the last Tq of the Tk positions.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return torch.softmax(scores, dim=-1)


def attention_kernel(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, bias: Tensor | None = None,
                     need_weights: bool = False, dropout_p: float = 0.0):
    """Σ_x̃ γ(x, x̃) v(x̃) for q: (B, H, T, d), k, v: (B, H, T, d) -> (out (B, H, T, dv), γ or None).

    Runs PyTorch's fused ``scaled_dot_product_attention`` unless the weights are asked for.
    """
    if need_weights:
        w = attention_weights(q, k, scale, causal, bias)
        if dropout_p > 0:
            w = F.dropout(w, dropout_p)
        return torch.matmul(w, v), w
    mask = None
    if bias is not None:
        mask = bias
        if causal:
            mask = bias.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    elif causal and q.shape[-2] != k.shape[-2]:
        # the queries are the last positions (bottom-right alignment, as attention_weights has it); PyTorch's
        # is_causal aligns a non-square mask top-left, so it would give another answer than need_weights=True
        mask = causal_mask(q.shape[-2], k.shape[-2], q.device)  # boolean: True = may attend
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                         is_causal=causal and mask is None, scale=scale)
    return out, None


def attention_operator(u: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor | None = None,
                       n_heads: int = 1, causal: bool = False, scale: float | None = None,
                       need_weights: bool = False):
    """The multi-head non-local operator 𝒜(u) (paper eqs. (6), (38)-(41)), in the paper's layout u @ W.

    u: (B, N_x, N_y); w_q, w_k: (N_y, H·d_k); w_v: (N_y, H·d_v); w_o: (H·d_v, N_y) or None.
    With ``w_o`` the result is standard MHA Concat(head_1..H) W^O. Without it, each head's value map is a
    full square W^V_m (d_v = N_y) and the heads are summed: Σ_m Softmax_2(c Q_m K_mᵀ) V_m (the paper's (41);
    a Riemann sum over the head variable with Δh = 1). ``scale`` defaults to 1/√d_k (the paper's
    1/√|Ω_y| with Δy = 1 for one head). Returns (A(u): (B, N_x, N_y), γ: (B, H, N_x, N_x) or None).
    """
    B, N, _ = u.shape
    dk, dv = w_q.shape[1] // n_heads, w_v.shape[1] // n_heads
    q = (u @ w_q).view(B, N, n_heads, dk).transpose(1, 2)
    k = (u @ w_k).view(B, N, n_heads, dk).transpose(1, 2)
    v = (u @ w_v).view(B, N, n_heads, dv).transpose(1, 2)
    scale = 1.0 / math.sqrt(dk) if scale is None else scale
    heads, w = attention_kernel(q, k, v, scale, causal, need_weights=need_weights)
    if w_o is None:
        return heads.sum(1), w
    return heads.transpose(1, 2).reshape(B, N, n_heads * dv) @ w_o, w


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding (non-interleaved halves, the Llama / GPT-NeoX convention): ``x cos + rotate_half(x) sin``
    with ``rotate_half(x₁, x₂) = (−x₂, x₁)`` over the halves of the rotated features.

    x: (B, H, T, d); cos/sin: (T, r) or anything broadcasting to (B, H, T, r), with r ≤ d: the first r features of
    each head rotate, the rest pass (partial rotary). ``rotate_half(x) sin`` is computed as ``roll(x, r/2) · s``
    with ``s = (−sin₁, sin₂)`` folded on the small (T, r) table: bitwise the same products, two fewer passes over
    ``x`` (no negation, no concatenation) in the forward and in the backward.
    """
    r = cos.shape[-1]
    signed = torch.cat((-sin[..., : r // 2], sin[..., r // 2:]), dim=-1)
    if r == x.shape[-1]:
        return x * cos + x.roll(r // 2, -1) * signed
    xr = x[..., :r]
    return torch.cat((xr * cos + xr.roll(r // 2, -1) * signed, x[..., r:]), dim=-1)


def euler(u: Tensor, f: Tensor, dt: float) -> Tensor:
    """The explicit Euler update ``u + dt·f``; at ``dt = 1`` exactly ``u + f`` (no multiply to run or differentiate)."""
    return u + f if dt == 1 else u + dt * f


ACTIVATIONS = {
    "relu": project_s2,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
}
