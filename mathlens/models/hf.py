"""Converters between :class:`~mathlens.models.gpt.GPT` and Hugging Face causal LMs, with the same logits.

- ``from_hf(model)``: ``GPT2LMHeadModel`` (Conv1D weights (in, out), fused ``c_attn`` = [q | k | v], learned
  positions, LayerNorm, ``gelu_new`` = tanh GELU), ``LlamaForCausalLM`` (RMSNorm, RoPE with halves rotated
  as in HF's ``rotate_half``, SwiGLU, grouped-query attention) or ``GPTNeoXForCausalLM`` (Pythia: LayerNorm, RoPE
  on a fraction of each head, fused per-head [q_h | k_h | v_h] projection; its parallel residual
  ``u + A(LN₁u) + F(LN₂u)`` is the parallel splitting, ``scheme = "parallel"``) -> GPT on the source's dtype and
  device.
- ``to_hf(gpt)``: back to the GPT-2 shape (learned positions, LayerNorm), the Llama shape (RoPE, RMSNorm,
  SwiGLU) or the GPT-NeoX shape (RoPE, LayerNorm; Lie or parallel splitting); anything else raises
  :class:`MathlensError` naming what Hugging Face cannot represent.

Numerics: HF Llama computes RMSNorm and the RoPE angles in float32 (GPT-NeoX: the angles) and (eager attention) the softmax in
float32 even for float64 models; mathlens computes them in the model's dtype. Logits agree to float32
rounding there, and to float64 rounding against a dtype-faithful reference (see tests/test_models_hf.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mathlens.errors import MathlensError
from mathlens.models.gpt import GPT, GPTConfig

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                    "tanh": "tanh", "silu": "silu", "swish": "silu"}
TO_GPT2_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "tanh": "tanh", "silu": "silu"}


def _source_place(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(model.parameters())
    return p.dtype, p.device


def _new_gpt(cfg: GPTConfig, dtype: torch.dtype, device: torch.device) -> GPT:
    with torch.device(device):
        gpt = GPT(cfg)
    return gpt.to(dtype=dtype).eval()


@torch.no_grad()
def _copy(dst: Tensor, src: Tensor) -> None:
    if dst.shape != src.shape:
        raise MathlensError(f"cannot convert: weight of shape {tuple(src.shape)} where {tuple(dst.shape)} is needed")
    dst.copy_(src)


def _check(config, field: str, ok: bool, why: str) -> None:
    if not ok:
        raise MathlensError(f"cannot convert {type(config).__name__}: {field} = {getattr(config, field, None)!r} "
                            f"is not supported ({why})")


# ---------------------------------------------------------------------------------------------- from HF


def gpt2_config(hc) -> GPTConfig:
    """GPTConfig of a ``GPT2Config``."""
    _check(hc, "activation_function", hc.activation_function in GPT2_ACTIVATIONS,
           f"allowed: {', '.join(GPT2_ACTIVATIONS)}")
    _check(hc, "scale_attn_by_inverse_layer_idx", not hc.scale_attn_by_inverse_layer_idx,
           "one attention scale for all layers")
    _check(hc, "add_cross_attention", not getattr(hc, "add_cross_attention", False), "decoder-only")
    D, H = hc.n_embd, hc.n_head
    return GPTConfig(vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer, n_head=H, n_embd=D,
                     d_ff=hc.n_inner or 4 * D, activation=GPT2_ACTIVATIONS[hc.activation_function], bias=True,
                     norm="layernorm", norm_eps=hc.layer_norm_epsilon, positional="learned",
                     tie_embeddings=bool(hc.tie_word_embeddings), dropout=float(hc.resid_pdrop),
                     attn_scale=None if hc.scale_attn_weights else 1.0)


def _default_rope(hc) -> dict:
    """``hc.rope_parameters`` as a dict; MathlensError for any RoPE scaling (only default RoPE converts)."""
    rope = dict(getattr(hc, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise MathlensError(f"cannot convert {type(hc).__name__}: rope scaling {rope_type!r} is not supported "
                            "(only default RoPE)")
    return rope


def llama_config(hc) -> GPTConfig:
    """GPTConfig of a ``LlamaConfig`` (default RoPE only)."""
    _check(hc, "hidden_act", hc.hidden_act == "silu", "SwiGLU with SiLU gate only")
    rope = _default_rope(hc)
    theta = rope.get("rope_theta", getattr(hc, "rope_theta", 10000.0))
    _check(hc, "mlp_bias", bool(hc.mlp_bias) == bool(hc.attention_bias),
           f"attention_bias = {hc.attention_bias!r} and mlp_bias must agree (one bias flag)")
    head_dim = getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads
    return GPTConfig(vocab_size=hc.vocab_size, block_size=hc.max_position_embeddings, n_layer=hc.num_hidden_layers,
                     n_head=hc.num_attention_heads, n_kv_head=hc.num_key_value_heads or hc.num_attention_heads,
                     head_dim=head_dim, n_embd=hc.hidden_size, d_ff=hc.intermediate_size, activation="swiglu",
                     bias=bool(hc.attention_bias), norm="rmsnorm", norm_eps=hc.rms_norm_eps, positional="rope",
                     rope_theta=float(theta), tie_embeddings=bool(hc.tie_word_embeddings),
                     dropout=float(hc.attention_dropout or 0.0), hf_numerics=True)


def neox_config(hc) -> GPTConfig:
    """GPTConfig of a ``GPTNeoXConfig`` (default RoPE only)."""
    _check(hc, "hidden_act", hc.hidden_act in GPT2_ACTIVATIONS, f"allowed: {', '.join(GPT2_ACTIVATIONS)}")
    _check(hc, "attention_bias", getattr(hc, "attention_bias", True), "the MLP and LayerNorms always have biases")
    rope = _default_rope(hc)
    return GPTConfig(vocab_size=hc.vocab_size, block_size=hc.max_position_embeddings, n_layer=hc.num_hidden_layers,
                     n_head=hc.num_attention_heads, n_embd=hc.hidden_size, d_ff=hc.intermediate_size,
                     activation=GPT2_ACTIVATIONS[hc.hidden_act], bias=True, norm="layernorm",
                     norm_eps=hc.layer_norm_eps, positional="rope",
                     rope_theta=float(rope.get("rope_theta", getattr(hc, "rotary_emb_base", 10000.0))),
                     rope_fraction=float(rope.get("partial_rotary_factor", getattr(hc, "rotary_pct", 1.0))),
                     scheme="parallel" if hc.use_parallel_residual else "lie",
                     tie_embeddings=bool(hc.tie_word_embeddings), dropout=float(hc.hidden_dropout or 0.0),
                     hf_numerics=True)


def _gpt2_pairs(gpt: GPT, hf):
    """(ours, theirs) parameter pairs of a GPT-2-shaped GPT and a ``GPT2LMHeadModel``; ``theirs`` is a view of
    the HF parameter in our layout (Conv1D ``y = x W + b`` weights transposed, ``c_attn`` cut into Q, K, V),
    ``ours`` None for a bias our model does not have."""
    t, D = hf.transformer, gpt.config.n_embd
    yield gpt.wte.weight, t.wte.weight
    yield gpt.pos.weight, t.wpe.weight
    for blk, h in zip(gpt.blocks, t.h):
        for ours, theirs in ((blk.norm_attn, h.ln_1), (blk.norm_ffn, h.ln_2)):
            yield ours.weight, theirs.weight
            yield ours.bias, theirs.bias
        w, b = h.attn.c_attn.weight, h.attn.c_attn.bias  # W: (D, 3D)
        for i, lin in enumerate((blk.attn.w_q, blk.attn.w_k, blk.attn.w_v)):
            yield lin.weight, w[:, i * D:(i + 1) * D].T
            yield lin.bias, b[i * D:(i + 1) * D]
        for lin, conv in ((blk.attn.w_o, h.attn.c_proj), (blk.ffn.w_in, h.mlp.c_fc), (blk.ffn.w_out, h.mlp.c_proj)):
            yield lin.weight, conv.weight.T
            yield lin.bias, conv.bias
    yield gpt.ln_f.weight, t.ln_f.weight
    yield gpt.ln_f.bias, t.ln_f.bias
    if not gpt.config.tie_embeddings:
        yield gpt.lm_head.weight, hf.lm_head.weight


def _llama_pairs(gpt: GPT, hf):
    """(ours, theirs) parameter pairs of a Llama-shaped GPT and a ``LlamaForCausalLM``."""
    m = hf.model
    yield gpt.wte.weight, m.embed_tokens.weight
    for blk, layer in zip(gpt.blocks, m.layers):
        yield blk.norm_attn.weight, layer.input_layernorm.weight
        yield blk.norm_ffn.weight, layer.post_attention_layernorm.weight
        a, f = layer.self_attn, layer.mlp
        for ours, theirs in ((blk.attn.w_q, a.q_proj), (blk.attn.w_k, a.k_proj), (blk.attn.w_v, a.v_proj),
                             (blk.attn.w_o, a.o_proj), (blk.ffn.w_gate, f.gate_proj), (blk.ffn.w_in, f.up_proj),
                             (blk.ffn.w_out, f.down_proj)):
            yield ours.weight, theirs.weight
            if ours.bias is not None or theirs.bias is not None:
                if ours.bias is None or theirs.bias is None:
                    raise MathlensError("cannot convert: attention_bias / mlp_bias do not match the layers' biases")
                yield ours.bias, theirs.bias
    yield gpt.ln_f.weight, m.norm.weight
    if not gpt.config.tie_embeddings:
        yield gpt.lm_head.weight, hf.lm_head.weight


def _neox_pairs(gpt: GPT, hf):
    """(ours, theirs) parameter pairs of a GPT-NeoX-shaped GPT and a ``GPTNeoXForCausalLM``; the fused
    ``query_key_value`` rows are per head ``[q_h; k_h; v_h]``, so both sides are viewed as (heads, head_dim, ...)."""
    m, c = hf.gpt_neox, gpt.config
    H, hd, D = c.n_head, c.head_dim, c.n_embd
    yield gpt.wte.weight, m.embed_in.weight
    for blk, layer in zip(gpt.blocks, m.layers):
        for ours, theirs in ((blk.norm_attn, layer.input_layernorm), (blk.norm_ffn, layer.post_attention_layernorm)):
            yield ours.weight, theirs.weight
            yield ours.bias, theirs.bias
        qkv = layer.attention.query_key_value
        w, b = qkv.weight.view(H, 3, hd, D), qkv.bias.view(H, 3, hd)
        for i, lin in enumerate((blk.attn.w_q, blk.attn.w_k, blk.attn.w_v)):
            yield lin.weight.view(H, hd, D), w[:, i]
            yield (None if lin.bias is None else lin.bias.view(H, hd)), b[:, i]
        for lin, theirs in ((blk.attn.w_o, layer.attention.dense), (blk.ffn.w_in, layer.mlp.dense_h_to_4h),
                            (blk.ffn.w_out, layer.mlp.dense_4h_to_h)):
            yield lin.weight, theirs.weight
            yield lin.bias, theirs.bias
    yield gpt.ln_f.weight, m.final_layer_norm.weight
    yield gpt.ln_f.bias, m.final_layer_norm.bias
    if not c.tie_embeddings:
        yield gpt.lm_head.weight, hf.get_output_embeddings().weight


#: Hugging Face class name -> (GPTConfig of its config, (ours, theirs) parameter pairs)
FROM_HF = {"GPT2LMHeadModel": (gpt2_config, _gpt2_pairs), "LlamaForCausalLM": (llama_config, _llama_pairs),
           "GPTNeoXForCausalLM": (neox_config, _neox_pairs)}


def from_hf(hf_model) -> GPT:
    """The mathlens GPT with the same logits as ``hf_model`` (GPT2LMHeadModel, LlamaForCausalLM or
    GPTNeoXForCausalLM).

    The result lives on the source model's device in its dtype and is in eval mode.
    """
    kind = type(hf_model).__name__
    if kind not in FROM_HF:
        raise MathlensError(f"cannot convert {kind}: supported Hugging Face models are {', '.join(FROM_HF)}")
    config_of, pairs = FROM_HF[kind]
    gpt = _new_gpt(config_of(hf_model.config), *_source_place(hf_model))
    for ours, theirs in pairs(gpt, hf_model):  # every converted config has the source's biases: ours is never None
        _copy(ours, theirs)
    return gpt


# ------------------------------------------------------------------------------------------------ to HF


def _common_blockers(c: GPTConfig) -> list[str]:
    """Settings of ``c`` that no standard pre-norm decoder (GPT-2, Llama, GPT-NeoX) has."""
    wanted = {"norm_position": "pre", "ffn_form": "standard", "residual": "euler", "skip": True,
              "dt": 1.0, "share_norms": False, "causal": True, "final_norm": True, "norm_affine": "vector"}
    out = [f"{k} = {getattr(c, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(c, k) != v]
    parallel_ok = c.positional == "rope" and c.norm == "layernorm"  # GPT-NeoX's parallel residual
    if c.scheme != "lie" and not (parallel_ok and c.scheme == "parallel"):
        out.append(f"scheme = {c.scheme!r} (needs 'lie'; 'parallel' only as GPT-NeoX: rope + layernorm)")
    if c.bias and c.ffn_bias_axis != "feature":
        out.append(f"ffn_bias_axis = {c.ffn_bias_axis!r} (needs 'feature')")
    return out


def to_hf(gpt: GPT):
    """The Hugging Face model with the same logits: GPT2LMHeadModel (learned positions, LayerNorm),
    LlamaForCausalLM (RoPE, RMSNorm, SwiGLU) or GPTNeoXForCausalLM (RoPE, LayerNorm). Same dtype and device as
    ``gpt``; eval mode."""
    c = gpt.config
    blockers = _common_blockers(c)
    if c.norm == "layernorm" and c.positional in ("learned", "rope"):
        name = "GPT-2" if c.positional == "learned" else "GPT-NeoX"
        if c.activation not in TO_GPT2_ACTIVATION:
            blockers.append(f"activation = {c.activation!r} ({name} allows {', '.join(TO_GPT2_ACTIVATION)})")
        if c.n_kv_head != c.n_head or c.head_dim * c.n_head != c.n_embd:
            blockers.append(f"grouped-query attention or head_dim·n_head ≠ n_embd ({name} has neither)")
        default_scale = 1.0 / math.sqrt(c.head_dim)
        if c.positional == "learned" and c.attn_scale is not None and c.attn_scale not in (1.0, default_scale):
            blockers.append(f"attn_scale = {c.attn_scale!r} (GPT-2 allows 1/√head_dim or 1)")
        if c.positional == "rope" and c.attn_scale is not None and not math.isclose(c.attn_scale, default_scale):
            blockers.append(f"attn_scale = {c.attn_scale!r} (GPT-NeoX uses 1/√head_dim)")
        make = _to_gpt2 if c.positional == "learned" else _to_neox
    elif c.positional == "rope" and c.norm == "rmsnorm":
        if c.activation != "swiglu":
            blockers.append(f"activation = {c.activation!r} (Llama needs 'swiglu')")
        if c.attn_scale is not None and not math.isclose(c.attn_scale, 1.0 / math.sqrt(c.head_dim)):
            blockers.append(f"attn_scale = {c.attn_scale!r} (Llama uses 1/√head_dim)")
        make = _to_llama
    else:
        blockers.append(f"positional = {c.positional!r} with norm = {c.norm!r} (Hugging Face export needs "
                        "learned + layernorm (GPT-2), rope + rmsnorm (Llama) or rope + layernorm (GPT-NeoX))")
        make = None
    if blockers:
        raise MathlensError("cannot export to Hugging Face: " + "; ".join(blockers))
    dtype, device = _source_place(gpt)
    hf = make(gpt)
    return hf.to(dtype=dtype, device=device).eval()


@torch.no_grad()
def _to_gpt2(gpt: GPT):
    from transformers import GPT2Config, GPT2LMHeadModel

    c = gpt.config
    hc = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                    n_head=c.n_head, n_inner=c.d_ff, activation_function=TO_GPT2_ACTIVATION[c.activation],
                    resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                    layer_norm_epsilon=c.norm_eps, scale_attn_weights=c.attn_scale != 1.0 or c.head_dim == 1,
                    tie_word_embeddings=c.tie_embeddings)
    hf = GPT2LMHeadModel(hc).to(dtype=_source_place(gpt)[0])
    for ours, theirs in _gpt2_pairs(gpt, hf):  # a bias our model lacks (bias=False) -> zero, the same function
        theirs.copy_(ours) if ours is not None else theirs.zero_()
    return hf


@torch.no_grad()
def _to_llama(gpt: GPT):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = gpt.config
    hc = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.d_ff,
                     num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                     head_dim=c.head_dim, max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
                     tie_word_embeddings=c.tie_embeddings, attention_bias=c.bias, mlp_bias=c.bias,
                     attention_dropout=c.dropout,
                     rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})
    hf = LlamaForCausalLM(hc).to(dtype=_source_place(gpt)[0])
    for ours, theirs in _llama_pairs(gpt, hf):
        theirs.copy_(ours)
    return hf


@torch.no_grad()
def _to_neox(gpt: GPT):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    c = gpt.config
    rope = {"rope_type": "default", "rope_theta": c.rope_theta, "partial_rotary_factor": c.rope_fraction}
    hc = GPTNeoXConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
                       num_attention_heads=c.n_head, intermediate_size=c.d_ff,
                       hidden_act=TO_GPT2_ACTIVATION[c.activation], max_position_embeddings=c.block_size,
                       layer_norm_eps=c.norm_eps, use_parallel_residual=c.scheme == "parallel",
                       tie_word_embeddings=c.tie_embeddings, attention_bias=True, hidden_dropout=c.dropout,
                       attention_dropout=c.dropout, rope_parameters=rope,
                       rotary_pct=c.rope_fraction, rotary_emb_base=c.rope_theta)  # the names before rope_parameters
    hf = GPTNeoXForCausalLM(hc).to(dtype=_source_place(gpt)[0])
    for ours, theirs in _neox_pairs(gpt, hf):  # a bias our model lacks (bias=False) -> zero, the same function
        theirs.copy_(ours) if ours is not None else theirs.zero_()
    return hf
