"""The operators of one splitting step as parametrised modules (the controls θ^n of step n).

- :class:`Norm`: projection onto S1 (LayerNorm) or the RMS sphere, scalar (σ1, σ2) or per-feature affine.
- :class:`Attention`: the non-local operator 𝒜 with (grouped-query) heads, RoPE / ALiBi, causal mask.
- :class:`FeedForward`: the local operator 𝓕 (standard, SwiGLU, or the paper's identity chain).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mathlens.flow.config import FlowConfig
from mathlens.flow.hooks import HookPoint
from mathlens.flow.operators import (
    ACTIVATIONS,
    apply_rope,
    attention_kernel,
    attention_weights,
    euler,
    project_rms,
    project_s1,
)


class Norm(nn.Module):
    """P_{S1}: LayerNorm (``kind="layernorm"``) or RMSNorm (``"rmsnorm"``) or identity (``"none"``)."""

    def __init__(self, d: int, kind: str = "layernorm", affine: str = "vector", eps: float = 1e-5, bias: bool = True,
                 upcast: bool = False):
        super().__init__()
        self.kind, self.affine, self.eps = kind, affine, eps
        self.upcast = upcast  # RMSNorm in float32 and cast back (Hugging Face Llama's numerics)
        self.weight = self.bias = self.sigma1 = self.sigma2 = None
        if kind == "none":
            return
        if affine == "vector":
            self.weight = nn.Parameter(torch.ones(d))
            if bias and kind == "layernorm":
                self.bias = nn.Parameter(torch.zeros(d))
        elif affine == "scalar":
            self.sigma2 = nn.Parameter(torch.tensor(1.0))
            if kind == "layernorm":
                self.sigma1 = nn.Parameter(torch.tensor(0.0))

    def forward(self, v: Tensor) -> Tensor:
        if self.kind == "none":
            return v
        if self.kind == "rmsnorm":
            sigma = 1.0 if self.sigma2 is None else self.sigma2
            if self.upcast:
                u = project_rms(v.float(), 1.0, self.eps).to(v.dtype)
                return self.weight * u if self.weight is not None else u * sigma
            return project_rms(v, sigma, self.eps, self.weight)
        if self.affine == "scalar":
            return project_s1(v, self.sigma1, self.sigma2, self.eps)
        return project_s1(v, eps=self.eps, weight=self.weight, bias=self.bias)


def alibi_slopes(n_head: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022): geometric sequence 2^(-8h/H), interpolated for non-powers of 2."""
    def powers(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(powers(n_head))
    m = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(powers(m) + powers(2 * m)[0::2][: n_head - m])


class Attention(nn.Module):
    """𝒜(u) = Σ_x̃ Softmax_2(scale · q(x)·k(x̃)) v(x̃), heads concatenated and mapped by ``w_o``.

    Hook points: ``hook_q`` (B,H,T,dh) after RoPE, ``hook_k``/``hook_v`` (B,Hkv,T,dh), ``hook_pattern``
    (B,H,T,T) — registering a hook on it switches this layer to materialised softmax — and ``hook_z``
    (B,H,T,dh), the per-head outputs before ``w_o``.
    """

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.causal = cfg.causal
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else 1.0 / math.sqrt(cfg.head_dim)
        D, H, Hkv, dh = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.w_q = nn.Linear(D, H * dh, bias=cfg.bias)
        self.w_k = nn.Linear(D, Hkv * dh, bias=cfg.bias)
        self.w_v = nn.Linear(D, Hkv * dh, bias=cfg.bias)
        self.w_o = nn.Linear(H * dh, D, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("alibi", None, persistent=False)
        for name in ("q", "k", "v", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def set_alibi(self, slopes: Tensor) -> None:
        self.alibi = slopes.clone()

    def score_bias(self, n_query: int, n_key: int, device, dtype) -> Tensor | None:
        """Additive ALiBi bias −m_h (x − x̃) of shape (H, Tq, Tk), or None."""
        if self.alibi is None:
            return None
        rel = (torch.arange(n_key, device=device)[None, :]
               - torch.arange(n_key - n_query, n_key, device=device)[:, None]).to(dtype)
        return self.alibi.to(device=device, dtype=dtype)[:, None, None] * rel

    def _repeat_kv(self, x: Tensor) -> Tensor:
        r = self.n_head // self.n_kv_head
        return x if r == 1 else x.repeat_interleave(r, dim=1)

    def pattern_from(self, q: Tensor, k: Tensor) -> Tensor:
        """Attention weights (B, H, Tq, Tk) for captured q: (B,H,Tq,dh), k: (B,Hkv,Tk,dh) (q = last Tq)."""
        bias = self.score_bias(q.shape[-2], k.shape[-2], q.device, q.dtype)
        return attention_weights(q, self._repeat_kv(k), self.scale, self.causal, bias)

    def forward(self, u: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, T, _ = u.shape
        q = self.w_q(u).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.w_k(u).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.w_v(u).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        bias = self.score_bias(T, T, u.device, u.dtype)
        z, w = attention_kernel(q, self._repeat_kv(k), self._repeat_kv(v), self.scale, self.causal, bias,
                                need_weights=self.hook_pattern.active,
                                dropout_p=self.dropout if self.training else 0.0)
        if w is not None:
            self.hook_pattern(w)
        z = self.hook_z(z)
        return self.resid_dropout(self.w_o(z.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)))


class FeedForward(nn.Module):
    """The local operator 𝓕, token by token.

    ``ffn_form="standard"``: 𝓕(u) = act(u W_in + b_in) W_out + b_out (SwiGLU: (silu(u W_gate) ⊙ u W_in) W_out).
    ``ffn_form="paper"``: the J = 2 substeps (15) u ← act(u + dt(u W_j + b_j)) with square W_j; the
    activation after the last layer only if ``relu_on_last`` (erratum 5).
    Biases per feature (default), per token (the paper's b_j(x, t)) or none.
    """

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.form, self.axis, self.relu_on_last = cfg.ffn_form, cfg.ffn_bias_axis, cfg.relu_on_last
        self.swiglu = cfg.activation == "swiglu"
        self.act = F.silu if self.swiglu else ACTIVATIONS[cfg.activation]
        feature_bias = cfg.bias and self.axis == "feature"
        self.w_in = nn.Linear(cfg.n_embd, cfg.d_ff, bias=feature_bias)
        if self.swiglu:
            self.w_gate = nn.Linear(cfg.n_embd, cfg.d_ff, bias=feature_bias)
        self.w_out = nn.Linear(cfg.d_ff, cfg.n_embd, bias=feature_bias)
        if cfg.bias and self.axis == "token":  # b_j(x): one value per token position, constant along features
            self.b_in_token = nn.Parameter(torch.zeros(cfg.block_size))
            self.b_out_token = nn.Parameter(torch.zeros(cfg.block_size))
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_hidden = HookPoint()

    def _linear(self, layer: nn.Linear, token_bias: str, u: Tensor) -> Tensor:
        y = layer(u)
        b = getattr(self, token_bias, None)
        return y if b is None else y + b[: u.shape[-2], None]

    def forward(self, u: Tensor) -> Tensor:
        """𝓕(u) for the standard form. u: (B, T, D) -> (B, T, D)."""
        if self.swiglu:
            h = self.act(self.w_gate(u)) * self._linear(self.w_in, "b_in_token", u)
        else:
            h = self.act(self._linear(self.w_in, "b_in_token", u))
        h = self.hook_hidden(h)
        return self.dropout(self._linear(self.w_out, "b_out_token", h))

    def step(self, u: Tensor, dt: float = 1.0) -> Tensor:
        """The state after the FFN substeps: u + dt 𝓕(u) (standard) or the paper's identity chain."""
        if self.form == "standard":
            return euler(u, self(u), dt)
        h = self.act(u + dt * self._linear(self.w_in, "b_in_token", u))
        h = self.hook_hidden(h)
        h = h + dt * self._linear(self.w_out, "b_out_token", h)
        return self.act(h) if self.relu_on_last else h
