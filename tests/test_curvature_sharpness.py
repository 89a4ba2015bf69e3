"""Sharpness measures on quadratics with known Hessian, and the attention-symmetry check."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_curvature_helpers import TinyAttention, attention_problem
from torch import nn

from mathlens.errors import MathlensError
from mathlens.probes.curvature.sharpness import adaptive_sharpness, keskar_sharpness, pac_bayes_sigma
from mathlens.probes.curvature.symmetry import apply_qk_symmetry, find_qk_pairs, random_invertible, symmetry_check


class Quadratic(nn.Module):
    """L(w) = ½ (w − c)ᵀ H (w − c), evaluated at w = c (a minimum) unless told otherwise."""

    def __init__(self, H, c):
        super().__init__()
        self.register_buffer("H", H)
        self.register_buffer("c", c.clone())
        self.w = nn.Parameter(c.clone())

    def forward(self, batch=None):
        d = self.w - self.c
        return 0.5 * d @ self.H @ d


def quad_loss(m, b):
    return m(b)


def _diag_problem(n=12, seed=0, zero=False):
    g = torch.Generator().manual_seed(seed)
    h = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    c = torch.zeros(n, dtype=torch.float64) if zero else torch.randn(n, generator=g, dtype=torch.float64)
    return Quadratic(torch.diag(h), c), h, c


@pytest.mark.parametrize("method", ["lbfgsb", "pgd"])
def test_keskar_closed_form_diagonal(method):
    # max over the box |z_i| ≤ ε(|w_i| + 1) of ½ Σ h_i z_i² is at the vertex: ½ Σ h_i ε²(|w_i|+1)²; L(w) = 0
    eps = 1e-3
    for zero in (True, False):
        model, h, c = _diag_problem(zero=zero)
        res = keskar_sharpness(model, quad_loss, [None], epsilon=eps, method=method, n_iter=10, seed=1)
        expected = 100 * 0.5 * float((h * (eps * (c.abs() + 1)) ** 2).sum())
        assert res.value == pytest.approx(expected, rel=1e-9)
        assert res.loss == 0.0 and res.to_dict()["measure"] == "keskar"


def test_keskar_subspace_and_errors():
    model, h, _ = _diag_problem(zero=True)
    res = keskar_sharpness(model, quad_loss, [None], epsilon=1e-3, subspace_dim=3, seed=0)
    # ½ (Ay)ᵀH(Ay) over |y_i| ≤ ε: positive, bounded by ½ λ_max(AᵀHA) ‖y‖² ≤ ½ ‖A‖² max h · 3ε²
    assert 0 < res.value
    with pytest.raises(MathlensError):
        keskar_sharpness(model, quad_loss, [None], epsilon=0.0)
    with pytest.raises(MathlensError):
        keskar_sharpness(model, quad_loss, [None], method="adam")


def test_adaptive_sharpness_closed_forms():
    rho = 0.1
    # p = inf, diagonal H: max over |η_i| ≤ ρ of ½ Σ h_i w_i² η_i² = ½ ρ² Σ h_i w_i²
    model, h, c = _diag_problem()
    res = adaptive_sharpness(model, quad_loss, [None], rho=rho, p="inf", n_iter=5, seed=0)
    assert res.value == pytest.approx(0.5 * rho**2 * float((h * c**2).sum()), rel=1e-9)
    # p = 2, general PSD H: ½ ρ² λ_max(D H D), D = diag|w| (normalised ascent = shifted power iteration)
    g = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    H = (Q * torch.tensor([9.0, 3, 2, 1, 1, 0.5, 0.2, 0.1], dtype=torch.float64)) @ Q.T
    c = 1 + torch.rand(8, generator=g, dtype=torch.float64)
    D = torch.diag(c.abs())
    expected = 0.5 * rho**2 * float(torch.linalg.eigvalsh(D @ H @ D)[-1])
    res = adaptive_sharpness(Quadratic(H, c), quad_loss, [None], rho=rho, p=2, n_iter=200, seed=0)
    assert res.value == pytest.approx(expected, rel=1e-6)
    short = adaptive_sharpness(Quadratic(H, c), quad_loss, [None], rho=rho, p=2, n_iter=2, seed=0)
    assert short.value < res.value  # a lower bound that improves with iterations
    with pytest.raises(MathlensError):
        adaptive_sharpness(model, quad_loss, [None], p=1)


def test_pac_bayes_sigma_closed_form():
    # E_u ½ uᵀHu = σ² tr(H)/2 -> σ* = sqrt(2δ / tr H). With n_draws = 200 the Monte Carlo mean of zᵀHz has
    # relative std sqrt(2 Σh²)/tr H/√200 ≈ 2.5%, so σ is within ~1.3% (1σ); 5% is ~4 standard errors.
    model, h, _ = _diag_problem(n=40, zero=True)
    delta = 0.01
    res = pac_bayes_sigma(model, quad_loss, [None], delta=delta, n_draws=200, seed=0, n_bisect=12)
    assert res.sigma == pytest.approx(math.sqrt(2 * delta / float(h.sum())), rel=0.05)
    assert res.deviation <= delta and res.measure == pytest.approx(1 / res.sigma**2)
    # magnitude-aware: E ΔL = ½ Σ h_i (σ² w_i² + ε²) -> σ² = (2δ − ε² tr H) / Σ h_i w_i²
    model, h, c = _diag_problem(n=40)
    eps = 1e-2
    res = pac_bayes_sigma(model, quad_loss, [None], delta=delta, n_draws=200, seed=0, magnitude_aware=True, eps=eps, n_bisect=12)
    expected = math.sqrt((2 * delta - eps**2 * float(h.sum())) / float((h * c**2).sum()))
    # heavier-tailed weights h_i w_i² make this Monte Carlo noisier (seeds 0-2: 0.9%, 2.8%, 1.8%)
    assert res.sigma == pytest.approx(expected, rel=0.06)
    # deterministic for a fixed seed
    again = pac_bayes_sigma(model, quad_loss, [None], delta=delta, n_draws=200, seed=0, magnitude_aware=True, eps=eps, n_bisect=12)
    assert again.sigma == res.sigma


def test_pac_bayes_sigma_away_from_a_minimum_equals_the_minimum_value():
    # antithetic pairs ±z cancel the first-order term σ gᵀz exactly on a quadratic, so moving w off the minimum
    # (here by 3 per coordinate: gᵀz dominates the curvature term) leaves the estimate unchanged to roundoff
    model, _, c = _diag_problem(n=40, zero=True)
    at_min = pac_bayes_sigma(model, quad_loss, [None], delta=0.01, n_draws=16, seed=1, n_bisect=20)
    with torch.no_grad():
        model.w.add_(3.0)
    off = pac_bayes_sigma(model, quad_loss, [None], delta=0.01, n_draws=16, seed=1, n_bisect=20)
    assert off.loss > 1.0
    assert off.sigma == pytest.approx(at_min.sigma, rel=1e-9)


def test_qk_symmetry_preserves_function_and_scores():
    model, loss_fn, batches = attention_problem()
    pairs = find_qk_pairs(model)
    assert [(p.q_name, p.n_head, p.head_dim) for p in pairs] == [("w_q", 2, 2)]
    moved, Rs = apply_qk_symmetry(model, seed=3, condition=100.0)
    assert not torch.equal(moved.w_q.weight, model.w_q.weight)  # really changed, original untouched
    x = batches[0][0]
    assert torch.allclose(moved(x), model(x), rtol=0, atol=1e-12)
    R = random_invertible(4, seed=0, condition=100.0)
    sv = torch.linalg.svdvals(R)
    assert float(sv[0] / sv[-1]) <= 100.0 + 1e-9
    with pytest.raises(MathlensError):
        apply_qk_symmetry(nn.Linear(2, 2))


def test_symmetry_check_reports_what_is_invariant():
    model, loss_fn, batches = attention_problem()
    res = symmetry_check(model, loss_fn, batches, measures=("loss", "lambda_max", "trace", "adaptive", "keskar"),
                         seed=0, condition=100.0, trace_samples=10, n_iter=5)
    assert res.relative_change["loss"] <= 1e-12 and res.invariant["loss"]
    assert res.relative_change["lambda_max"] > 1e-3 and not res.invariant["lambda_max"]
    assert res.relative_change["trace"] > 1e-3
    assert set(res.to_dict()) >= {"before", "after", "relative_change", "invariant"}
    # a diagonal R is an elementwise rescaling: adaptive sharpness is invariant, λ_max and Keskar are not
    diag = symmetry_check(model, loss_fn, batches, measures=("loss", "lambda_max", "adaptive", "keskar"),
                          seed=0, kind="diagonal", condition=100.0, n_iter=5)
    assert diag.relative_change["adaptive"] <= 1e-9
    assert diag.relative_change["lambda_max"] > 1e-3 and diag.relative_change["keskar"] > 1e-3


def _gpt_loss(m, b):
    logits, _ = m(b[0])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[1].reshape(-1))


@pytest.mark.parametrize("positional,n_kv_head", [("learned", 1), ("rope", 2)])
def test_symmetry_on_mathlens_gpt(positional, n_kv_head):
    mathlens = pytest.importorskip("mathlens")
    torch.manual_seed(0)
    cfg = mathlens.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_kv_head=n_kv_head, n_embd=8,
                             positional=positional)
    model = mathlens.GPT(cfg).double()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randint(0, 11, (2, 8), generator=g), torch.randint(0, 11, (2, 8), generator=g))
    assert len(find_qk_pairs(model)) == 1
    res = symmetry_check(model, _gpt_loss, [batch], measures=("loss",), kind="general", condition=10.0)
    if positional == "rope":  # RoPE sits between the projection and the dot product: not a symmetry
        assert res.relative_change["loss"] > 1e-8
    else:  # grouped-query attention: both query heads share the key group's R
        assert res.relative_change["loss"] <= 1e-12
    ortho = symmetry_check(model, _gpt_loss, [batch], measures=("loss",), kind="orthogonal")
    assert ortho.relative_change["loss"] <= 1e-12 or positional == "rope"


def test_tiny_attention_without_bias():
    model = TinyAttention(bias=False)
    moved, _ = apply_qk_symmetry(model, seed=1)
    x = torch.randint(0, 5, (2, 5))
    assert torch.allclose(moved(x), model(x), atol=1e-12, rtol=0)
