"""from_hf / to_hf: exact logit parity with Hugging Face GPT-2, Llama and GPT-NeoX (random tiny models, no download).

Tolerances. float64: the two implementations do the same arithmetic in a different order, so logits of
magnitude ~1 differ by a few ulps (~1e-16); 1e-10 leaves six orders of margin and still catches any
wrong weight, transpose, scale or rotation (those give O(1e-2) differences). float32: 1e-5 (ulp 6e-8 times
a few hundred operations).

HF Llama computes RMSNorm and the RoPE angles in float32 even in a float64 model (a deliberate cast in
``LlamaRMSNorm.forward`` / ``LlamaRotaryEmbedding.forward``). ``from_hf`` reproduces those float32 islands
(``GPTConfig.hf_numerics``), so a converted Llama matches stock HF to 1e-10 in float64; with ``hf_numerics``
off it computes them in float64 and matches HF with the two functions evaluated in float64 (``faithful_llama``)
instead — the two differ by float32 rounding (~1e-8).
"""

import dataclasses

import pytest
import torch

from mathlens import GPT, GPTConfig, from_hf
from mathlens.errors import MathlensError

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.models.llama import modeling_llama  # noqa: E402

V, T = 61, 12


@torch.no_grad()
def _nontrivial_vectors(model):
    """Non-trivial norm affine maps and biases (HF initialises them to 1 / 0), so a swapped one shows."""
    for p in model.parameters():
        if p.dim() == 1:
            p.add_(0.1 * torch.randn_like(p))
    return model


def gpt2(tie=True, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=tie,
                     bos_token_id=0, eos_token_id=0, attn_implementation="eager", **kw)
    return _nontrivial_vectors(GPT2LMHeadModel(cfg).to(dtype).eval())


def llama(tie=False, dtype=torch.float64, **kw):
    torch.manual_seed(1)
    kw.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 500.0})
    kw.setdefault("head_dim", 8)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                      tie_word_embeddings=tie, bos_token_id=0, eos_token_id=0, pad_token_id=None,
                      attn_implementation="sdpa", **kw)
    return _nontrivial_vectors(LlamaForCausalLM(cfg).to(dtype).eval())


def neox(parallel=True, fraction=0.25, tie=False, dtype=torch.float64, **kw):
    """A tiny GPT-NeoX (Pythia's shape: parallel residual, RoPE on a quarter of each head by default)."""
    torch.manual_seed(2)
    kw.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": fraction})
    cfg = GPTNeoXConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        max_position_embeddings=16, use_parallel_residual=parallel, tie_word_embeddings=tie,
                        bos_token_id=0, eos_token_id=0, attn_implementation="sdpa", **kw)
    return _nontrivial_vectors(GPTNeoXForCausalLM(cfg).to(dtype).eval())


@pytest.fixture
def faithful_llama(monkeypatch):
    """HF Llama with RMSNorm and RoPE evaluated in the model's dtype (same formulas, no float32 cast)."""
    def rms_forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        freqs = position_ids[..., None].to(work) * self.inv_freq.to(device=x.device, dtype=work)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_forward)
    monkeypatch.setattr(modeling_llama.LlamaRotaryEmbedding, "forward", rope_forward)


def tokens(B=3):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def max_diff(hf_model, gpt):
    idx = tokens()
    ref = hf_model(idx).logits
    ours, _ = gpt(idx)
    assert ref.abs().max() > 0.05  # the comparison is not between two near-zero tensors
    return (ref - ours).abs().max().item()


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_parity_float64(tie):
    hf = gpt2(tie=tie)
    gpt = from_hf(hf)
    assert gpt.config.tie_embeddings == tie and (gpt.lm_head.weight is gpt.wte.weight) == tie
    assert gpt.config.activation == "gelu_tanh" and gpt.config.positional == "learned"
    assert max_diff(hf, gpt) <= 1e-10


@pytest.mark.parametrize("tie", [False, True])
def test_llama_gqa_parity_float64(tie):
    hf = llama(tie=tie)
    gpt = from_hf(hf)
    c = gpt.config
    assert (c.n_head, c.n_kv_head, c.head_dim, c.rope_theta) == (4, 2, 8, 500.0)
    assert c.tie_embeddings == tie
    assert max_diff(hf, gpt) <= 1e-10


def test_llama_head_dim_and_biases_from_config():
    hf = llama(head_dim=16, attention_bias=True, mlp_bias=True)  # H·head_dim = 64 ≠ hidden 32
    gpt = from_hf(hf)
    assert gpt.config.head_dim == 16 and gpt.config.bias
    assert max_diff(hf, gpt) <= 1e-10


def test_llama_without_hf_numerics_is_float64_throughout(faithful_llama):
    """from_hf reproduces HF's float32 islands (hf_numerics); switched off, the converted model computes RMSNorm and
    RoPE in float64 and equals HF with those two functions in float64 (faithful_llama) instead."""
    hf = llama()
    converted = from_hf(hf)
    assert converted.config.hf_numerics
    gpt = GPT(dataclasses.replace(converted.config, hf_numerics=False)).double().eval()
    gpt.load_state_dict(converted.state_dict())
    assert max_diff(hf, gpt) <= 1e-10
    with torch.no_grad():
        gap = float((gpt(tokens())[0] - converted(tokens())[0]).abs().max())
    assert 1e-10 < gap < 1e-6  # the float32 islands: float32 rounding, nothing more


@pytest.mark.parametrize("make", [gpt2, llama])
def test_float32_parity_and_dtype_device_kept(make):
    hf = make(dtype=torch.float32)
    gpt = from_hf(hf)
    assert {p.dtype for p in gpt.parameters()} == {torch.float32}
    assert {p.device for p in gpt.parameters()} == {next(hf.parameters()).device}
    assert not gpt.training
    assert max_diff(hf, gpt) <= 1e-5
    for dtype in (torch.float64, torch.bfloat16):
        assert {p.dtype for p in from_hf(make(dtype=dtype)).parameters()} == {dtype}


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_round_trip(tie):
    hf = gpt2(tie=tie)
    back = from_hf(hf).to_hf()
    assert type(back).__name__ == "GPT2LMHeadModel" and next(back.parameters()).dtype == torch.float64
    idx = tokens()
    with torch.no_grad():
        assert (hf(idx).logits - back(idx).logits).abs().max().item() <= 1e-10
    sd, sd_back = hf.state_dict(), back.state_dict()
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)  # the weights themselves come back bit for bit


@pytest.mark.parametrize("tie", [False, True])
def test_llama_round_trip(tie, faithful_llama):
    hf = llama(tie=tie)
    back = from_hf(hf).to_hf()
    assert type(back).__name__ == "LlamaForCausalLM"
    assert back.config.num_key_value_heads == 2 and back.config.tie_word_embeddings == tie
    idx = tokens()
    with torch.no_grad():
        assert (hf(idx).logits - back(idx).logits).abs().max().item() <= 1e-10


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("fraction, rotated", [(0.25, 2), (1.0, 8)])
@pytest.mark.parametrize("tie", [False, True])
def test_neox_parity_float64_and_round_trip(parallel, fraction, rotated, tie):
    """GPT-NeoX's parallel residual u + A(LN₁u) + F(LN₂u) is the parallel splitting; its partial rotary rotates the
    first int(head_dim · fraction) features of each head. A wrong split of the per-head [q|k|v] rows or of the rotated
    features gives O(1e-2) differences."""
    hf = neox(parallel, fraction, tie)
    gpt = from_hf(hf)
    c = gpt.config
    assert c.scheme == ("parallel" if parallel else "lie") and c.positional == "rope" and c.rope_dim == rotated
    assert max_diff(hf, gpt) <= 1e-10
    back = gpt.to_hf()
    assert type(back).__name__ == "GPTNeoXForCausalLM" and back.config.use_parallel_residual == parallel
    sd, sd_back = hf.state_dict(), back.state_dict()
    assert all(torch.equal(sd[k], sd_back[k]) for k in sd)


def test_rope_preset_model_exports_to_neox():
    """The nanogpt-char-*-rope architecture (rotary positions, LayerNorm, GELU, no biases, tied) becomes a GPT-NeoX
    with zero biases. HF computes RoPE angles in float32: with hf_numerics the GPT does too and the logits agree to
    float64 rounding; without, they differ by the float32 rounding of the angles, nothing more."""
    from mathlens.train.presets import preset

    torch.manual_seed(3)
    arch = {k: v for k, v in preset("nanogpt-char-cpu-rope")["model"].items() if k not in ("n_layer", "n_head", "n_embd")}
    for numerics, tol in ((True, 1e-10), (False, 1e-6)):
        cfg = GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32, hf_numerics=numerics, **arch)
        gpt = GPT(cfg).double().eval()
        with torch.no_grad():  # non-trivial LayerNorm scales
            for blk in gpt.blocks:
                blk.norm_attn.weight.add_(0.3 * torch.randn(32, dtype=torch.float64))
        hf = gpt.to_hf()
        assert type(hf).__name__ == "GPTNeoXForCausalLM" and hf.config.tie_word_embeddings
        assert max_diff(hf, gpt) <= tol
        assert float(hf.gpt_neox.layers[0].attention.query_key_value.bias.detach().abs().max()) == 0.0


def test_neox_unsupported_settings():
    with pytest.raises(MathlensError, match="attention_bias"):
        from_hf(neox(attention_bias=False))
    with pytest.raises(MathlensError, match="rope scaling 'linear'"):
        from_hf(neox(rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0,
                                      "partial_rotary_factor": 0.25}))
    cfg = GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=4, n_embd=32, scheme="parallel")
    with pytest.raises(MathlensError, match="'parallel' only as GPT-NeoX"):
        GPT(cfg).to_hf()  # learned positions: GPT-2 has no parallel residual
    with pytest.raises(MathlensError, match="rope_fraction"):
        GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=4, n_embd=32, positional="rope", rope_fraction=0.1)


def test_gpt_to_hf_to_gpt_keeps_logits():
    """A native GPT (bias=False: GPT-2 gets zero biases) survives to_hf and back."""
    torch.manual_seed(3)
    cfg = GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=4, n_embd=32, activation="gelu_tanh", bias=False)
    gpt = GPT(cfg).double().eval()
    again = from_hf(gpt.to_hf())
    idx = tokens()
    with torch.no_grad():
        assert (gpt(idx)[0] - again(idx)[0]).abs().max().item() <= 1e-10


@pytest.mark.parametrize("override, named", [
    (dict(scheme="strang"), "scheme"),
    (dict(norm_position="post"), "norm_position"),
    (dict(positional="alibi"), "positional"),
    (dict(activation="swiglu"), "activation"),
    (dict(n_kv_head=2), "grouped-query"),
    (dict(dt=0.5), "dt"),
])
def test_to_hf_names_what_cannot_be_represented(override, named):
    cfg = GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=4, n_embd=32, **override)
    with pytest.raises(MathlensError, match=named):
        GPT(cfg).to_hf()


def test_to_hf_llama_needs_swiglu():
    cfg = GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=4, n_embd=32, positional="rope",
                    norm="rmsnorm", activation="gelu")
    with pytest.raises(MathlensError, match="swiglu"):
        GPT(cfg).to_hf()


def test_unsupported_architectures_and_settings():
    with pytest.raises(MathlensError, match="GPT2Model"):
        from_hf(transformers.GPT2Model(GPT2Config(vocab_size=V, n_positions=8, n_embd=16, n_layer=1, n_head=2)))
    with pytest.raises(MathlensError, match="rope scaling 'linear'"):
        from_hf(llama(rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}))
    with pytest.raises(MathlensError, match="hidden_act"):
        from_hf(llama(hidden_act="gelu"))
    with pytest.raises(MathlensError, match="mlp_bias"):
        from_hf(llama(attention_bias=True, mlp_bias=False))
    with pytest.raises(MathlensError, match="scale_attn_by_inverse_layer_idx"):
        from_hf(gpt2(scale_attn_by_inverse_layer_idx=True))
