"""GPT: generate() (seeds, greedy limit, top-k) and user errors at the GPTConfig / GPT level."""

import math

import pytest
import torch
import torch.nn.functional as F

from mathlens import GPT, GPTConfig
from mathlens.errors import MathlensError


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=29, block_size=16, n_layer=2, n_head=2, n_embd=16, init_std=0.5)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


PROMPT = torch.tensor([[1, 2, 3], [4, 5, 6]])


@torch.no_grad()
def greedy(model, idx, n):
    """Reference greedy decoder: argmax of the full-context logits at the last position."""
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_same_seed_same_tokens_different_seed_different_tokens():
    model = tiny(init_std=0.02)  # nearly uniform next-token distribution over 29 tokens
    a = model.generate(PROMPT, 20, seed=11)
    assert a.shape == (2, 23) and torch.equal(a[:, :3], PROMPT)
    assert torch.equal(a, model.generate(PROMPT, 20, seed=11))
    assert not torch.equal(a, model.generate(PROMPT, 20, seed=12))  # equal with probability ~ (1/29)^40


def test_temperature_zero_and_top_k_one_are_greedy_past_the_context():
    model = tiny()
    ref = greedy(model, PROMPT, 20)  # 23 > block_size 16: the context window slides
    assert torch.equal(model.generate(PROMPT, 20, temperature=0.0), ref)
    assert torch.equal(model.generate(PROMPT, 20, top_k=1, seed=3), ref)


def test_small_temperature_converges_to_greedy():
    model = tiny(init_std=1.0)
    ref = greedy(model, PROMPT, 8)
    with torch.no_grad():
        logits, _ = model(ref[:, :-1])
    top2 = logits[:, 2:].topk(2, -1).values  # the 8 decisions made
    gap = (top2[..., 0] - top2[..., 1]).min().item()
    assert gap > 0
    T = gap / 60  # each decision picks a non-argmax token with probability < 28 e^-60
    assert torch.equal(model.generate(PROMPT, 8, temperature=T, seed=0), ref)


def test_top_k_tokens_are_among_the_k_most_likely():
    model = tiny(init_std=0.3)
    out = model.generate(PROMPT, 12, top_k=3, seed=5)
    with torch.no_grad():
        logits, _ = model(out[:, :-1])
    ranks = (logits[:, 2:] > logits[:, 2:].gather(-1, out[:, 3:, None])).sum(-1)  # tokens ranked above the draw
    assert ranks.max().item() <= 2


def test_loss_is_mean_cross_entropy_ignoring_minus_one():
    model = tiny()
    idx = torch.randint(0, 29, (2, 10), generator=torch.Generator().manual_seed(1))
    targets = idx.roll(-1, 1)
    targets[:, -1] = -1
    logits, loss = model(idx, targets)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 29), targets[:, :-1].reshape(-1))
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-6)


@pytest.mark.parametrize("kw, named", [
    (dict(n_head=3), "n_head = 3 does not divide n_embd = 16"),
    (dict(n_kv_head=3, n_head=4), "n_kv_head = 3 does not divide n_head"),
    (dict(scheme="rk4"), "scheme = 'rk4' is invalid"),
    (dict(positional="relative"), "positional = 'relative' is invalid"),
    (dict(dt=0.0), "dt = 0.0 is invalid"),
    (dict(dt=-0.5), "dt = -0.5 is invalid"),
    (dict(activation="softplus"), "activation = 'softplus' is invalid"),
    (dict(vocab_size=0), "vocab_size = 0 is invalid"),
    (dict(positional="rope", head_dim=7), "rope' rotates head_dim"),
])
def test_bad_config_names_the_problem(kw, named):
    cfg = dict(vocab_size=29, block_size=16, n_layer=1, n_head=2, n_embd=16)
    cfg.update(kw)
    with pytest.raises(MathlensError, match=named.replace("(", r"\(")):
        GPTConfig(**cfg)


def test_bad_config_from_dict():
    with pytest.raises(MathlensError, match="n_layers"):
        GPTConfig.from_dict({"n_layers": 2})
    with pytest.raises(MathlensError, match="n_layer"):
        GPTConfig.from_dict({"n_layer": "two"})


def test_sequence_longer_than_context():
    model = tiny()
    with pytest.raises(MathlensError, match="length 17 is longer than the context block_size = 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("kw, named", [(dict(temperature=-0.1), "temperature"), (dict(top_k=0), "top_k"),
                                       (dict(top_p=1.2), "top_p")])
def test_bad_generate_settings(kw, named):
    with pytest.raises(MathlensError, match=named):
        tiny().generate(PROMPT, 2, seed=0, **kw)


@pytest.mark.parametrize("r", [8, 4])  # full and partial rotary (GPT-NeoX rotates a fraction of each head)
def test_apply_rope_is_hugging_faces_formula_bitwise_and_an_isometry(r):
    from mathlens.flow.operators import apply_rope
    from mathlens.models.positional import Positional

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    cos, sin = Positional("rope", 5, 24, r).rope(5, "cpu", torch.float64)
    xr, h = x[..., :r], r // 2
    rotated = torch.cat((-xr[..., h:], xr[..., :h]), -1)  # HF's rotate_half
    hf = torch.cat((xr * cos + rotated * sin, x[..., r:]), -1)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y, hf)
    # each (i, i + r/2) pair turns by the angle t·θ_i: norms per token are kept, and position 0 is the identity
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-14, atol=0)
    assert torch.equal(y[:, :, 0], x[:, :, 0])
    # its backward is the transposed rotation, applied to the upstream gradient
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    assert torch.allclose(dx, apply_rope(g, cos, -sin), rtol=0, atol=1e-15)
    assert torch.autograd.gradgradcheck(lambda t: apply_rope(t, cos, sin), (x,))
