"""Exact attention with a memory-light double backward, for Hessian-vector products by double backward.

PyTorch's fused ``scaled_dot_product_attention`` kernels have no double backward. Its math backend has one, but
the graph a double backward keeps holds the ``(B, h, T, T)`` weights three times per layer (the softmax, its
gradient and the score gradient): at GPT-2's T = 1024 that is 0.4 GiB a tensor. Here the forward runs the fused
kernel and saves ``q, k, v``, its output ``O`` and the mask; the first backward saves the same and ``dO``; both
backward passes recompute the weights in chunks of query rows (under GQA the saved ``k, v`` are the repeated
ones). Per head, with ``S = c q kᵀ + M`` (``M``: the additive mask, −∞ where a key is hidden),
``P = softmax(S)`` row-wise and ``O = P v``:

* first backward (given ``dO``): ``dP = dO vᵀ``, ``D = rowsum(P ⊙ dP)``, ``dS = P ⊙ (dP − D)``,
  ``dq = c dS k``, ``dk = c dSᵀ q``, ``dv = Pᵀ dO``;
* second backward, the vector–Jacobian product of ``(dq, dk, dv)`` with cotangents ``(gq, gk, gv)``:
  ``G = c (gq kᵀ + q gkᵀ)``, ``P̄ = dO gvᵀ + G ⊙ (dP − D) − rowsum(G ⊙ P) ⊙ dP``,
  ``dP̄ = P ⊙ (G − rowsum(G ⊙ P))``, ``S̄ = P ⊙ (P̄ − rowsum(P̄ ⊙ P))``, and
  ``q̄ = c (dS gk + S̄ k)``, ``k̄ = c (dSᵀ gq + S̄ᵀ q)``, ``v̄ = dP̄ᵀ dO``, ``dŌ = P gv + dP̄ v``.

Every row of ``P`` is independent, so each chunk of rows contributes its own ``q̄, dŌ`` rows and a sum to
``k̄, v̄``. A row with no visible key has ``P = 0`` (as in PyTorch's kernels), so it contributes nothing.
:func:`twice_differentiable_attention` swaps every ``F.scaled_dot_product_attention`` call (our GPT and Hugging Face
models alike) for this one while it is active, on the thread that enters it; the calls this attention does not cover
run PyTorch's math backend, which has a double backward too.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

#: entries of one chunk of weights ``(B, h, rows, T)`` on the CPU: 2^20 float32 = 4 MiB, cache-sized. On the 4 × 128
#: GPT at T = 1024 (B = 2) a kept-graph product took 0.71 s at 2^20 against 2.24 s in one chunk of 2^24: the
#: chunks stay in cache and causal chunks skip the hidden keys (``benchmarks/hvp_cost.py --shape long``).
CHUNK_ELEMENTS = 2**20
#: the same on a GPU, where fewer, larger kernels pay: 2^24 entries (64 MiB in float32)
CHUNK_ELEMENTS_GPU = 2**24


def _row_chunks(q: Tensor, k: Tensor, causal: bool):
    """``(start, end, n_keys)`` for chunks of query rows; a causal chunk sees only keys ``< end``."""
    B, h, T, _ = q.shape
    budget = CHUNK_ELEMENTS if q.device.type == "cpu" else CHUNK_ELEMENTS_GPU
    rows = max(8, budget // max(B * h * k.shape[-2], 1))
    for start in range(0, T, rows):
        end = min(T, start + rows)
        yield start, end, (end if causal else k.shape[-2])


def _weights(qs: Tensor, k: Tensor, mask: Tensor | None, causal: bool, start: int, end: int,
             n_keys: int) -> tuple[Tensor, Tensor]:
    """Rows ``start:end`` of ``P`` over the first ``n_keys`` keys, ``(B, h, rows, n_keys)``, from the scaled queries
    ``qs = c q``; and those keys."""
    kc = k[..., :n_keys, :]
    s = torch.matmul(qs[..., start:end, :], kc.transpose(-1, -2))
    if mask is not None:
        m = mask[..., start:end, :n_keys] if mask.shape[-2] > 1 else mask[..., :n_keys]
        s = s.masked_fill_(~m, float("-inf")) if m.dtype == torch.bool else s.add_(m)
    if causal:
        s.masked_fill_(torch.ones(end - start, n_keys, dtype=torch.bool, device=s.device).triu_(start + 1),
                       float("-inf"))
    P = torch.softmax(s, dim=-1)
    if mask is not None:  # a row whose keys are all hidden: softmax gives NaN, PyTorch's kernels give 0
        P = P.nan_to_num_(nan=0.0)
    return P, kc


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(..., rows, d) × (..., rows, d) -> (..., rows, 1)``: ``D = rowsum(P ⊙ dP) = rowsum(dO ⊙ O)``, the cheap way."""
    return (a * b).sum(-1, keepdim=True)


class _AttentionBackward(torch.autograd.Function):
    """``(q, k, v, O, dO) -> (dq, dk, dv)``, the first backward; its own backward is the second (once
    differentiable). ``O`` (the forward's output) only serves ``D = rowsum(dO ⊙ O)``; its dependence on q, k, v is
    in the formulas, so no gradient flows to it."""

    @staticmethod
    def forward(ctx, q, k, v, out, dout, mask, scale, causal):
        ctx.save_for_backward(q, k, v, out, dout, mask)
        ctx.scale, ctx.causal = scale, causal
        qs, D = q * scale, _row_dot(dout, out)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for a, b, n in _row_chunks(q, k, causal):
            P, kc = _weights(qs, k, mask, causal, a, b, n)
            do = dout[..., a:b, :]
            dS = torch.matmul(do, v[..., :n, :].transpose(-1, -2)).sub_(D[..., a:b, :]).mul_(P)  # P ⊙ (dP − D)
            dq[..., a:b, :] = torch.matmul(dS, kc).mul_(scale)
            dk[..., :n, :] += torch.matmul(dS.transpose(-1, -2), qs[..., a:b, :])
            dv[..., :n, :] += torch.matmul(P.transpose(-1, -2), do)
        return dq, dk, dv

    @staticmethod
    @once_differentiable
    def backward(ctx, gq, gk, gv):
        q, k, v, out, dout, mask = ctx.saved_tensors
        c, causal = ctx.scale, ctx.causal
        gq, gk, gv = (torch.zeros_like(t) if g is None else g for g, t in ((gq, q), (gk, k), (gv, v)))
        qs, D = q * c, _row_dot(dout, out)
        left, right = torch.cat([gq, q], -1).mul_(c), torch.cat([k, gk], -1)  # G = left rightᵀ = c (gq kᵀ + q gkᵀ)
        q_bar, k_bar, v_bar, do_bar = (torch.zeros_like(t) for t in (q, k, v, dout))
        for a, b, n in _row_chunks(q, k, causal):
            P, kc = _weights(qs, k, mask, causal, a, b, n)
            do, gqa = dout[..., a:b, :], gq[..., a:b, :]
            vc, gkc, gvc = v[..., :n, :], gk[..., :n, :], gv[..., :n, :]
            dP = torch.matmul(do, vc.transpose(-1, -2))
            dPc = dP - D[..., a:b, :]
            dS = P * dPc
            G = torch.matmul(left[..., a:b, :], right[..., :n, :].transpose(-1, -2))
            GP = _row_dot(G, P)
            P_bar = torch.matmul(do, gvc.transpose(-1, -2)).addcmul_(G, dPc).sub_(dP.mul_(GP))
            dP_bar = G.sub_(GP).mul_(P)  # P ⊙ (G − rowsum(G ⊙ P))
            S_bar = P_bar.sub_(_row_dot(P_bar, P)).mul_(P)  # P ⊙ (P̄ − rowsum(P̄ ⊙ P))
            q_bar[..., a:b, :] = (torch.matmul(dS, gkc) + torch.matmul(S_bar, kc)).mul_(c)
            k_bar[..., :n, :] += torch.matmul(dS.transpose(-1, -2), gqa).add_(
                torch.matmul(S_bar.transpose(-1, -2), q[..., a:b, :])).mul_(c)
            v_bar[..., :n, :] += torch.matmul(dP_bar.transpose(-1, -2), do)
            do_bar[..., a:b, :] = torch.matmul(P, gvc) + torch.matmul(dP_bar, vc)
        return q_bar, k_bar, v_bar, None, do_bar, None, None, None


class _Attention(torch.autograd.Function):
    """``softmax(c q kᵀ + M) v`` by the fused kernel; its backward is :class:`_AttentionBackward` (differentiable)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale, causal):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
        ctx.save_for_backward(q, k, v, out, mask)
        ctx.scale, ctx.causal = scale, causal
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, mask = ctx.saved_tensors
        dq, dk, dv = _AttentionBackward.apply(q, k, v, out, dout, mask, ctx.scale, ctx.causal)
        return dq, dk, dv, None, None, None


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` with the memory-light double backward (module doc), same arguments.

    ``q: (B, h, T, d)``, ``k: (B, h_kv, S, d)``, ``v: (B, h_kv, S, d_v)`` -> ``(B, h, T, d_v)``. Dropout, half
    precision, causal cross-attention (T ≠ S), a mask with a gradient or of fewer than 2 dimensions, and key/value
    batches or heads that only broadcast run PyTorch's math backend instead.
    """
    if enable_gqa and q.dim() == 4 and k.dim() == 4 and k.shape[1] != q.shape[1] and q.shape[1] % k.shape[1] == 0:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    covered = (dropout_p == 0 and q.dtype in (torch.float32, torch.float64) and q.dim() == k.dim() == v.dim() == 4
               and k.shape[:2] == v.shape[:2] == q.shape[:2] and k.dtype == v.dtype == q.dtype
               and not (is_causal and (q.shape[-2] != k.shape[-2] or attn_mask is not None))
               and (attn_mask is None or (attn_mask.dim() >= 2 and not attn_mask.requires_grad)))
    if not covered:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                  is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.to(q.dtype)  # broadcastable to (B, h, T, S)
    c = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _Attention.apply(q, k, v, attn_mask, c, bool(is_causal))


class _SwapAttention(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def twice_differentiable_attention():
    """While active, every ``F.scaled_dot_product_attention`` call runs :func:`attention` (module doc)."""
    with _SwapAttention():
        yield
