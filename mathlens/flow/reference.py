"""A textbook post-LN Transformer block (Vaswani et al. 2017) and converters to and from the paper's θ.

:func:`vaswani_post_ln_block` is written from scratch with plain tensor operations (it shares no code with
:mod:`mathlens.flow`), so that the equivalence "one Lie step with dt = 1 = one post-LN block" (THEORY §5.3,
prediction 1) is a comparison of two independent implementations:

    x' = LN₁(x + MHA(x)),     y = LN₂(x' + ReLU(x' W₁ + b₁) W₂ + b₂),
    MHA(x) = Concat_h(softmax(Q_h K_hᵀ / √d_k) V_h) W^O + b_O.

The paper's FFN substeps ū = u + dt(u W_j + b_j) give Vaswani weights W_j^std = I + dt·W_j, b_j^std = dt·b_j;
its attention substep u + dt𝒜(u) gives W^O ← dt·W^O; the scalar LN controls give weight σ2·𝟙, bias σ1·𝟙.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mathlens.errors import MathlensError
from mathlens.flow.block import FlowBlock
from mathlens.flow.config import FlowConfig


@dataclass
class VaswaniParams:
    """Weights of one post-LN block in the layout x @ W. Shapes: w_q, w_k: (N_y, H·d_k), w_v: (N_y, H·d_v),
    w_o: (H·d_v, N_y), w1: (N_y, d_ff), w2: (d_ff, N_y); biases and LN vectors 1-D (None = no bias)."""

    w_q: Tensor
    w_k: Tensor
    w_v: Tensor
    w_o: Tensor
    ln1_weight: Tensor
    ln1_bias: Tensor
    w1: Tensor
    b1: Tensor | None
    w2: Tensor
    b2: Tensor | None
    ln2_weight: Tensor
    ln2_bias: Tensor
    n_head: int
    eps: float = 0.0
    b_q: Tensor | None = None
    b_k: Tensor | None = None
    b_v: Tensor | None = None
    b_o: Tensor | None = None


def _affine(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x @ w if b is None else x @ w + b


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _multi_head_attention(x: Tensor, p: VaswaniParams, causal: bool) -> Tensor:
    T = x.shape[-2]
    dk, dv = p.w_q.shape[1] // p.n_head, p.w_v.shape[1] // p.n_head
    q, k, v = _affine(x, p.w_q, p.b_q), _affine(x, p.w_k, p.b_k), _affine(x, p.w_v, p.b_v)
    heads = []
    for h in range(p.n_head):
        qh, kh, vh = q[..., h * dk:(h + 1) * dk], k[..., h * dk:(h + 1) * dk], v[..., h * dv:(h + 1) * dv]
        scores = qh @ kh.transpose(-1, -2) / math.sqrt(dk)
        if causal:
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ vh)
    return _affine(torch.cat(heads, dim=-1), p.w_o, p.b_o)


def vaswani_post_ln_block(x: Tensor, p: VaswaniParams, causal: bool = False) -> Tensor:
    """x: (B, T, N_y) -> (B, T, N_y), the post-LN block with ReLU FFN (use float64 for comparisons)."""
    x1 = _layer_norm(x + _multi_head_attention(x, p, causal), p.ln1_weight, p.ln1_bias, p.eps)
    ffn = _affine(torch.relu(_affine(x1, p.w1, p.b1)), p.w2, p.b2)
    return _layer_norm(x1 + ffn, p.ln2_weight, p.ln2_bias, p.eps)


def _check_paper_block(cfg: FlowConfig) -> None:
    problems = []
    if cfg.ffn_form != "paper":
        problems.append("ffn_form = 'paper'")
    if cfg.relu_on_last:
        problems.append("relu_on_last = False")
    if cfg.ffn_bias_axis == "token":
        problems.append("ffn_bias_axis = 'feature' or 'none'")
    if cfg.norm_position != "post" or cfg.scheme != "lie" or cfg.norm != "layernorm":
        problems.append("a post-norm Lie step with LayerNorm")
    if cfg.activation != "relu":
        problems.append("activation = 'relu'")
    if cfg.residual == "euler":
        problems.append("residual = 'average' or 'sum'")
    if cfg.n_kv_head != cfg.n_head or cfg.attn_scale is not None or not cfg.skip:
        problems.append("plain multi-head attention with scale 1/√d_k and skip = True")
    if problems:
        raise MathlensError("a Vaswani block corresponds to a FlowBlock with " + ", ".join(problems))


def _norm_vectors(norm, d: int, like: Tensor) -> tuple[Tensor, Tensor]:
    if norm.affine == "vector":
        return norm.weight.detach().clone(), (norm.bias.detach().clone() if norm.bias is not None
                                              else torch.zeros(d, dtype=like.dtype))
    if norm.affine == "scalar":
        return norm.sigma2.detach() * torch.ones(d, dtype=like.dtype), norm.sigma1.detach() * torch.ones(d, dtype=like.dtype)
    return torch.ones(d, dtype=like.dtype), torch.zeros(d, dtype=like.dtype)


def _t(layer) -> tuple[Tensor, Tensor | None]:
    return layer.weight.detach().T.clone(), (None if layer.bias is None else layer.bias.detach().clone())


def to_vaswani(block: FlowBlock) -> VaswaniParams:
    """Vaswani weights of a paper-form Lie step (W_j^std = I + dt·W_j, b^std = dt·b, W^O ← dt·W^O)."""
    cfg = block.cfg
    _check_paper_block(cfg)
    dt, D = cfg.dt, cfg.n_embd
    eye = torch.eye(D, dtype=block.ffn.w_in.weight.dtype)
    (w_q, b_q), (w_k, b_k), (w_v, b_v), (w_o, b_o) = (_t(block.attn.w_q), _t(block.attn.w_k), _t(block.attn.w_v),
                                                      _t(block.attn.w_o))
    (w1, b1), (w2, b2) = _t(block.ffn.w_in), _t(block.ffn.w_out)
    scale = (lambda b: None if b is None else dt * b)
    ln1 = _norm_vectors(block.norm_attn, D, eye)
    ln2 = _norm_vectors(block.norm_ffn, D, eye)
    return VaswaniParams(w_q=w_q, w_k=w_k, w_v=w_v, w_o=dt * w_o, ln1_weight=ln1[0], ln1_bias=ln1[1],
                         w1=eye + dt * w1, b1=scale(b1), w2=eye + dt * w2, b2=scale(b2), ln2_weight=ln2[0],
                         ln2_bias=ln2[1], n_head=cfg.n_head, eps=cfg.norm_eps, b_q=b_q, b_k=b_k, b_v=b_v,
                         b_o=scale(b_o))


def _set_norm(norm, weight: Tensor, bias: Tensor, which: str) -> None:
    if norm.affine == "vector":
        norm.weight.copy_(weight)
        if norm.bias is not None:
            norm.bias.copy_(bias)
        return
    if not (torch.all(weight == weight[0]) and torch.all(bias == bias[0])):
        raise MathlensError(f"{which}: per-feature LayerNorm weights are not a scalar σ1, σ2 "
                            "(use norm_affine = 'vector')")
    norm.sigma2.copy_(weight[0])
    norm.sigma1.copy_(bias[0])


@torch.no_grad()
def from_vaswani(p: VaswaniParams, cfg: FlowConfig) -> FlowBlock:
    """The paper's θ of a Vaswani block: W_j = (W_j^std − I)/dt, b_j = b_j^std/dt, W^O = W^O_std/dt.

    ``cfg`` must describe a paper-form step with the same shapes (bias=True iff the FFN has biases)."""
    _check_paper_block(cfg)
    if p.n_head != cfg.n_head or p.w1.shape != (cfg.n_embd, cfg.n_embd):
        raise MathlensError(f"Vaswani weights (n_head = {p.n_head}, w1 {tuple(p.w1.shape)}) do not fit "
                            f"n_head = {cfg.n_head}, n_embd = {cfg.n_embd} with a square FFN")
    if cfg.share_norms and not (torch.equal(p.ln1_weight, p.ln2_weight) and torch.equal(p.ln1_bias, p.ln2_bias)):
        raise MathlensError("share_norms = True but the two LayerNorms of the Vaswani block differ")
    cfg = dataclasses.replace(cfg)
    block = FlowBlock(cfg).to(p.w1.dtype)
    dt, eye = cfg.dt, torch.eye(cfg.n_embd, dtype=p.w1.dtype)
    pairs = [(block.attn.w_q, p.w_q, p.b_q, 1.0), (block.attn.w_k, p.w_k, p.b_k, 1.0),
             (block.attn.w_v, p.w_v, p.b_v, 1.0), (block.attn.w_o, p.w_o, p.b_o, 1.0 / dt),
             (block.ffn.w_in, p.w1 - eye, p.b1, 1.0 / dt), (block.ffn.w_out, p.w2 - eye, p.b2, 1.0 / dt)]
    for layer, w, b, c in pairs:
        layer.weight.copy_(c * w.T)
        if layer.bias is not None:
            layer.bias.copy_(c * b if b is not None else torch.zeros_like(layer.bias))
    _set_norm(block.norm_attn, p.ln1_weight, p.ln1_bias, "LN1")
    _set_norm(block.norm_ffn, p.ln2_weight, p.ln2_bias, "LN2")
    return block
