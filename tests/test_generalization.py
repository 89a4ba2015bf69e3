import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mathlens.errors import MathlensError
from mathlens.probes.generalization import (
    _kl_bernoulli,
    attention_head_capacity,
    generalization_gap,
    head_matrices,
    model_bounds,
    norm_21,
    pac_bayes_bound,
    pac_bayes_kl,
    predicted_ratio,
    spectral_bound,
    spectral_complexity,
    spectral_norm,
)


def test_generalization_gap_ci():
    rng = np.random.default_rng(0)
    r = generalization_gap(rng.normal(1.0, 0.05, 200), rng.normal(1.3, 0.05, 200), n_boot=500)
    assert r.gap.estimate == pytest.approx(r.val - r.train) and r.gap.contains(0.3) and r.gap.excludes(0.0)
    json.dumps(r.to_dict())


def test_spectral_bound_single_matrix_by_hand():
    W = np.diag([3.0, 1.0])  # ||W||_2 = 3, ||W^T||_21 = 3 + 1 = 4 -> R = 3 * ((4/3)^(2/3))^(3/2) = 4
    assert spectral_norm(W) == 3.0 and norm_21(W) == 4.0
    b = spectral_bound([W], m=100)
    assert b.value == pytest.approx(4 / 10) and b.terms["R"] == pytest.approx(4.0)
    assert spectral_bound([W], m=100, B_X=2.0, margin=4.0).value == pytest.approx(4 * 2 / (4 * 10))
    json.dumps(b.to_dict())


def test_spectral_complexity_two_layers_and_rank_one():
    u, v = np.array([1.0, -2.0, 2.0]), np.array([3.0, 4.0])
    W1 = np.outer(u, v)  # (3, 2): ||.||_2 = |u||v| = 15, ||W^T||_21 = sum|u_i| |v| = 25
    W2 = np.array([[0.0, 2.0, 0.0]])  # ||.||_2 = 2, ||.^T||_21 = 2
    R, terms = spectral_complexity([W1, W2])
    assert terms["spectral_norms"] == pytest.approx([15.0, 2.0]) and terms["norms_21"] == pytest.approx([25, 2])
    assert R == pytest.approx(30 * ((25 / 15) ** (2 / 3) + 1) ** 1.5)
    R_ref, _ = spectral_complexity([W1, W2], references=[W1 * 0.5, None])
    assert R_ref == pytest.approx(30 * ((12.5 / 15) ** (2 / 3) + 1) ** 1.5)
    with pytest.raises(MathlensError):
        spectral_complexity([np.zeros((2, 2))])


def test_attention_capacity_log_T_and_m_dependence():
    rng = np.random.default_rng(1)
    qk, ov = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    b1, b2 = attention_head_capacity(qk, ov, T=16, m=1000), attention_head_capacity(qk, ov, T=1024, m=1000)
    assert b2.value / b1.value == pytest.approx(math.sqrt(math.log(1024) / math.log(16)))
    assert b2.value / b1.value == pytest.approx(predicted_ratio(b1.dependence, "T", 16, 1024))
    b3 = attention_head_capacity(qk, ov, T=16, m=4000)
    assert b3.value / b1.value == pytest.approx(predicted_ratio(b1.dependence, "D", 1000, 4000)) == 0.5
    # closed form for identity matrices in d = 4, B_X = 1: a = 4, b = 2 * 1 * 4 = 8
    b = attention_head_capacity(np.eye(4), np.eye(4), T=math.e ** 2, m=2)  # sqrt(log T / m) = 1
    assert b.value == pytest.approx((4 ** (2 / 3) + 8 ** (2 / 3)) ** 1.5)
    with pytest.raises(MathlensError):
        attention_head_capacity(qk, ov, T=1, m=10)


def test_pac_bayes_closed_forms():
    w0 = np.zeros(10)
    w = np.full(10, 0.1)  # ||w - w0||^2 = 0.1
    assert pac_bayes_kl(w, w0, sigma=0.1) == pytest.approx(0.1 / (2 * 0.01))
    m, d = 10000, 0.05
    mc = pac_bayes_bound(0.1, w, w0, 0.1, m, d)
    assert mc.value == pytest.approx(0.1 + math.sqrt((5.0 + math.log(2 * math.sqrt(m) / d)) / (2 * m)))
    assert mc.dependence["D"] == pytest.approx(-0.5, abs=0.02)  # log √m term makes it slightly > −0.5
    kl = pac_bayes_bound(0.1, w, w0, 0.1, m, d, kind="kl")
    rhs = (5.0 + math.log(2 * math.sqrt(m) / d)) / m
    assert _kl_bernoulli(0.1, kl.value) == pytest.approx(rhs, rel=1e-9)
    assert 0.1 < kl.value <= mc.value  # Pinsker: the kl-inverse is the tighter one
    ca = pac_bayes_bound(0.0, w, w0, 0.1, m, d, kind="catoni", catoni_c=1.0)
    assert ca.value == pytest.approx((1 - math.exp(-(5.0 + math.log(1 / d)) / m)) / (1 - math.exp(-1)))
    zero = pac_bayes_bound(0.0, w, w0, 0.1, m, d, kind="kl")
    assert zero.dependence["D"] == pytest.approx(-1.0, abs=0.05)  # realisable case: O(1/m)
    with pytest.raises(MathlensError):
        pac_bayes_bound(1.5, w, w0, 0.1, m)
    with pytest.raises(MathlensError):
        pac_bayes_bound(0.1, w, w0, 0.1, m, kind="nope")


class _Attn(nn.Module):
    def __init__(self, d, H, Hkv, dh):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim, self.scale = H, Hkv, dh, dh**-0.5
        self.w_q, self.w_k = nn.Linear(d, H * dh), nn.Linear(d, Hkv * dh)
        self.w_v, self.w_o = nn.Linear(d, Hkv * dh), nn.Linear(H * dh, d)


class _TinyGPT(nn.Module):
    """Only the GPT-contract names that the generalisation probes read."""

    def __init__(self, d=8, H=4, Hkv=2, dh=2, n_layer=2):
        super().__init__()
        self.config = SimpleNamespace(block_size=32)
        self.blocks = nn.ModuleList(nn.Module() for _ in range(n_layer))
        for b in self.blocks:
            b.attn = _Attn(d, H, Hkv, dh)
        self.lm_head = nn.Linear(d, 11, bias=False)


@torch.no_grad()
def test_head_matrices_reproduce_scores_and_values():
    torch.manual_seed(0)
    model = _TinyGPT().double()
    attn = model.blocks[1].attn
    x, y = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    heads = head_matrices(model, 1)
    assert len(heads) == 4
    for h, (qk, ov) in enumerate(heads):
        g = h // 2  # GQA: 4 query heads share 2 kv heads
        q = (attn.w_q.weight @ x)[2 * h:2 * h + 2]
        k = (attn.w_k.weight @ y)[2 * g:2 * g + 2]
        assert x.numpy() @ qk @ y.numpy() == pytest.approx(float(attn.scale * q @ k), abs=1e-12)
        v = (attn.w_v.weight @ y)[2 * g:2 * g + 2]
        assert ov @ y.numpy() == pytest.approx((attn.w_o.weight[:, 2 * h:2 * h + 2] @ v).numpy(), abs=1e-12)


def test_model_bounds():
    torch.manual_seed(0)
    model = _TinyGPT()
    b = model_bounds(model, m=1000)
    assert len(b["attention"].terms["per_head"]) == 8 and b["attention"].terms["T"] == 32
    assert b["spectral"].value > 0 and len(b["spectral"].terms["spectral_norms"]) == 9  # 2 x 4 + lm_head
    assert b["attention"].dependence["T"] == "sqrt_log"
    json.dumps({k: v.to_dict() for k, v in b.items()})
