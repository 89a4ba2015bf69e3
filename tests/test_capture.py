"""capture(): recomputed attention against the models' own materialised weights; Nadaraya–Watson identity."""

import json

import matplotlib
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from mathlens import GPT, GPTConfig
from mathlens.errors import MathlensError
from mathlens.probes import attention_stats as st
from mathlens.probes.attention import attention_summary, random_init
from mathlens.probes.attention_kernel import kernel_smoother_check
from mathlens.probes.attention_plots import plot_head_heatmap, plot_layer_profiles, plot_spectra
from mathlens.probes.capture import attention_pattern, capture, qk_weights

ALL = ("resid", "q", "k", "v", "z", "pattern")


def _gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).double().eval()


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).double().eval()


def _gpt(positional="learned", n_kv_head=None):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, n_kv_head=n_kv_head,
                    positional=positional)
    return GPT(cfg).double().eval()


MODELS = {"gpt2": _gpt2, "llama": _llama, "gpt": _gpt, "gpt-rope-gqa": lambda: _gpt("rope", 2),
          "gpt-alibi": lambda: _gpt("alibi")}


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, 50, (3, 21), generator=torch.Generator().manual_seed(0))


def _hooks_left(model):
    """Hooks of ours still registered (HF installs output-recording hooks of its own on first use)."""
    return sum(getattr(fn, "__module__", "").startswith("mathlens") for m in model.modules()
               for fn in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()])


@pytest.mark.parametrize("name", list(MODELS))
def test_recomputed_pattern_equals_the_models_own_weights(name, idx):
    """HF: output_attentions with eager attention (its softmax runs in float32, hence 1e-6); GPT: hook_pattern."""
    model = MODELS[name]()
    c = capture(model, idx, what=ALL, chunk_rows=4)  # several chunks of query rows, the last one ragged
    e = capture(model, idx, what=("pattern",), pattern_source="eager")
    tol = 1e-6 if name in ("gpt2", "llama") else 1e-13
    for i in range(2):
        P, Pe = c[f"blocks.{i}.attn.hook_pattern"], e[f"blocks.{i}.attn.hook_pattern"]
        assert P.shape == Pe.shape == (3, c.n_head, 21, 21) and P.dtype == torch.float64
        assert (P - Pe).abs().max().item() < tol
        assert torch.all(P.triu(1) == 0) and torch.allclose(P.sum(-1), torch.ones(3, c.n_head, 21, dtype=P.dtype))
        if name != "gpt-alibi":
            assert torch.allclose(c.pattern(i, chunk_rows=100), P, atol=1e-15)
    assert _hooks_left(model) == 0
    if name == "llama":
        assert model.config._attn_implementation == "sdpa"  # restored after the eager cross-check


@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt", "gpt-rope-gqa"])
def test_nadaraya_watson_identity_on_module_outputs(name, idx):
    """The per-head output the module computes (hook_z / input of the output projection) is the NW smoother."""
    model = MODELS[name]()
    c = capture(model, idx, what=("q", "k", "v", "z"))
    for i in range(2):
        r = kernel_smoother_check(c[f"blocks.{i}.attn.hook_q"], c[f"blocks.{i}.attn.hook_k"],
                                  c[f"blocks.{i}.attn.hook_v"], c[f"blocks.{i}.attn.hook_z"], c.scales[i])
        assert r.nw_max_residual < 1e-13 * max(1.0, r.scale_of_values)
        assert r.hull_max_violation < 1e-14 and r.weights_min >= 0 and r.weights_sum_max_error < 1e-14


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_hf_residual_states_equal_output_hidden_states(name, idx):
    model = MODELS[name]()
    c = capture(model, idx, what=("resid",))
    hs = model(input_ids=idx, output_hidden_states=True).hidden_states
    assert torch.equal(c["hook_embed"], hs[0]) and torch.equal(c["hook_final"], hs[-1])
    assert torch.equal(c["blocks.0.hook_resid_pre"], hs[0]) and torch.equal(c["blocks.1.hook_resid_pre"], hs[1])
    assert torch.equal(c["blocks.0.hook_resid_post"], hs[1])
    assert len(c.resid_states()) == 3


def test_layer_and_head_selection_with_grouped_query_attention(idx):
    model = _llama()
    full = capture(model, idx, what=("q", "k", "pattern"))
    sub = capture(model, idx, layers=[1], heads=[1, 3], what=("q", "k", "pattern"))
    assert sorted(sub.keys()) == ["blocks.1.attn.hook_k", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_q"]
    assert sub.kv_index() == [0, 1] and sub["blocks.1.attn.hook_k"].shape[1] == 2
    assert torch.equal(sub["blocks.1.attn.hook_pattern"], full["blocks.1.attn.hook_pattern"][:, [1, 3]])
    assert torch.equal(sub["blocks.1.attn.hook_q"], full["blocks.1.attn.hook_q"][:, [1, 3]])
    with pytest.raises(MathlensError, match="was not captured"):
        sub["blocks.0.attn.hook_q"]


def test_bad_requests_are_one_line_errors(idx):
    model = _gpt()
    for kwargs, msg in [(dict(what=("resid", "attn")), "unknown capture item"), (dict(layers=[5]), "layers"),
                        (dict(heads=[-1]), "heads"), (dict(pattern_source="flash"), "pattern_source")]:
        with pytest.raises(MathlensError, match=msg):
            capture(model, idx, **kwargs)
    with pytest.raises(MathlensError, match="int64"):
        capture(model, idx.float())
    with pytest.raises(MathlensError, match="does not know the layout"):
        capture(torch.nn.Linear(3, 3), idx)
    assert _hooks_left(model) == 0


def test_attention_pattern_chunks_agree():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 3, 10, 4, generator=g), torch.randn(2, 3, 10, 4, generator=g)
    a = attention_pattern(q, k, 0.5, causal=True, chunk_rows=3)
    b = torch.softmax((q.double() @ k.double().transpose(-1, -2) * 0.5).masked_fill(
        torch.ones(10, 10, dtype=torch.bool).triu(1), float("-inf")), -1)
    assert torch.allclose(a, b, atol=1e-15)
    nc = attention_pattern(q, k, 0.5, causal=False, chunk_rows=4)
    assert torch.allclose(nc, torch.softmax(q.double() @ k.double().transpose(-1, -2) * 0.5, -1), atol=1e-15)


def test_attention_pattern_entropy_from_scores_equals_entr():
    """``with_entropy``: H_i = lse_i − Σ_j P_ij S_ij from each chunk's scores, equal to −Σ P log P of the returned
    weights (float64: to roundoff; float32: to its rounding), chunked or not, causal or not; a uniform row (q = 0)
    has H_i = log m_i exactly as the closed form."""
    g = torch.Generator().manual_seed(4)
    q, k = 3 * torch.randn(2, 3, 12, 4, generator=g), torch.randn(2, 3, 12, 4, generator=g)
    for causal in (True, False):
        for chunk in (5, 256):
            for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
                P, H = attention_pattern(q, k, 0.5, causal=causal, chunk_rows=chunk, dtype=dtype, with_entropy=True)
                assert torch.equal(P, attention_pattern(q, k, 0.5, causal=causal, chunk_rows=chunk, dtype=dtype))
                assert H.shape == (2, 3, 12) and H.dtype == dtype
                assert torch.allclose(H.double(), st.row_entropy(P.double()), atol=tol, rtol=0)
    _, H = attention_pattern(torch.zeros(1, 1, 6, 4), k[:1, :1, :6], 1.0, causal=True, with_entropy=True)
    assert torch.allclose(H[0, 0], torch.log(torch.arange(1, 7, dtype=torch.float64)), atol=1e-15, rtol=0)


def test_capture_hooks_only_what_it_keeps(idx):
    """Each hooked module takes PyTorch's slower call path, so a capture hooks only the points it needs, and every
    hook is gone afterwards."""
    model = MODELS["gpt"]()
    seen = []
    orig = model.blocks[0].attn.hook_v.register_forward_hook
    model.blocks[0].attn.hook_v.register_forward_hook = lambda fn: (seen.append("v"), orig(fn))[1]
    c = capture(model, idx, what=("pattern",))
    assert seen == [] and set(c.keys()) == {f"blocks.{i}.attn.hook_pattern" for i in c.layers}
    capture(model, idx, what=("v",))
    assert seen == ["v"] and _hooks_left(model) == 0


def test_qk_weights_reproduce_captured_queries_and_keys(idx):
    """W_Q,h and W_K,h (layouts differ: GPT-2 Conv1D (in, out), nn.Linear (out, in)) map the normed state to q, k."""
    for name in ("gpt2", "gpt"):
        model = MODELS[name]()
        c = capture(model, idx, layers=[0], what=("resid", "q", "k"))
        Wq, Wk = qk_weights(model, 0)
        block = model.transformer.h[0] if name == "gpt2" else model.blocks[0]
        x = (block.ln_1 if name == "gpt2" else block.norm_attn)(c["blocks.0.hook_resid_pre"])
        attn = block.attn
        bq, bk = ((attn.c_attn.bias[:32], attn.c_attn.bias[32:64]) if name == "gpt2" else (attn.w_q.bias, attn.w_k.bias))
        H = Wq.shape[0]
        q = torch.einsum("btd,hde->bhte", x, Wq) + bq.view(H, 1, -1)
        k = torch.einsum("btd,hde->bhte", x, Wk) + bk.view(H, 1, -1)
        assert torch.allclose(q, c["blocks.0.attn.hook_q"], atol=1e-12)
        assert torch.allclose(k, c["blocks.0.attn.hook_k"], atol=1e-12)


def test_attention_summary_with_random_baseline_and_figures(idx):
    model = _gpt()
    s = attention_summary(model, idx, seed=1)
    assert len(s.trained.heads) == len(s.random.heads) == 8 and len(s.trained.mercer) == 8
    assert len(s.trained.rank_collapse) == 3 and all(0 < r <= 1 for r in s.trained.rank_collapse)
    assert s.trained.rank_collapse != s.random.rank_collapse  # a different seed: a different model
    assert all(ch.nw_max_residual < 1e-12 for ch in s.trained.kernel_checks.values())
    d = json.loads(json.dumps(s.to_dict()))
    assert d["settings"]["seed"] == 1 and d["trained"]["heads"][0]["settings"]["energy_k"] == 5
    other = random_init(model, 1)
    assert next(other.parameters()).dtype == torch.float64
    assert not torch.equal(other.blocks[0].attn.w_q.weight, model.blocks[0].attn.w_q.weight)
    P = capture(model, idx, layers=[0], what=("pattern",))["blocks.0.attn.hook_pattern"]
    for fig in (plot_layer_profiles(s), plot_head_heatmap(s, "gini"), plot_spectra(P, labels=list("abcd"))):
        assert isinstance(fig, matplotlib.figure.Figure)
        matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("make", [_gpt, lambda: _gpt("rope", 2), _gpt2])
def test_layers_batched_statistics_equal_one_layer_at_a_time(make, idx):
    """model_attention computes several layers' statistics side by side; the numbers are those of one layer
    at a time (max_elements=1 forces that) and of head_statistics on each captured pattern."""
    from mathlens.probes.attention import head_statistics, model_attention

    model = make()
    kw = dict(kernel_checks=False, mercer=False, spectral_batch=1)
    together, alone = model_attention(model, idx, **kw), model_attention(model, idx, max_elements=1, **kw)
    c = capture(model, idx, what=("pattern",))
    direct = [h for i in c.layers for h in head_statistics(c[f"blocks.{i}.attn.hook_pattern"], i, spectral_batch=1)]
    assert [(h.layer, h.head) for h in together.heads] == [(h.layer, h.head) for h in direct]
    for a, b, d in zip(together.heads, alone.heads, direct):
        for key in ("entropy", "normalised_entropy", "top_k_mass", "gini", "frac_above_tau", "effective_rank",
                    "stable_rank", "rank_for_eps", "energy_at_k"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-12, abs=1e-12), key
            assert getattr(a, key) == pytest.approx(getattr(d, key), rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("name", ["gpt", "gpt2", "llama"])
def test_resid_post_keeps_only_what_resid_states_reads(name, idx):
    """``what=("resid_post",)`` keeps the embedding and each block's output, equal to those of a full capture."""
    model = MODELS[name]()
    full, post = capture(model, idx, what=("resid",)), capture(model, idx, what=("resid_post",))
    assert set(post.keys()) == {"hook_embed"} | {f"blocks.{i}.hook_resid_post" for i in post.layers}
    assert all(torch.equal(a, b) for a, b in zip(full.resid_states(), post.resid_states()))
    assert _hooks_left(model) == 0


def test_model_attention_repeated_calls_agree(idx):
    """model_attention's numbers do not depend on what ran before it (no state is kept between calls)."""
    from mathlens.probes.attention import model_attention

    a, b = _gpt(), _gpt("rope", 2)
    kw = dict(kernel_checks=False, mercer=False, pattern_dtype=torch.float32)
    first = model_attention(a, idx, **kw).to_dict()
    model_attention(b, idx[:, :15], **kw)
    assert model_attention(a, idx, **kw).to_dict() == first


def test_spectral_batch_zero_skips_only_the_spectra(idx):
    """``spectral_batch=0``: the spectral fields are None (valid JSON), every row statistic is unchanged; negative
    batch sizes are one-line errors."""
    from mathlens.probes.attention import model_attention

    model = _gpt()
    kw = dict(kernel_checks=False, mercer=False)
    full, rows = model_attention(model, idx, spectral_batch=1, **kw), model_attention(model, idx, spectral_batch=0, **kw)
    spectral = ("effective_rank", "effective_rank_ratio", "stable_rank", "rank_for_eps", "energy_at_k")
    for a, b in zip(full.heads, rows.heads):
        assert all(getattr(b, k) is None for k in spectral) and all(getattr(a, k) > 0 for k in spectral)
        for k in ("entropy", "normalised_entropy", "top_k_mass", "gini", "frac_above_tau"):
            assert getattr(a, k) == getattr(b, k)
    assert json.loads(json.dumps(rows.to_dict()))["heads"][0]["settings"]["spectral_batch"] == 0
    for bad in (dict(spectral_batch=-1), dict(row_batch=0)):
        with pytest.raises(MathlensError, match="spectral_batch must be"):
            model_attention(model, idx, **kw, **bad)
