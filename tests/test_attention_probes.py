"""Attention statistics against closed forms (prescribed spectra, uniform / one-hot rows)."""

import math

import pytest
import torch

from mathlens.errors import MathlensError
from mathlens.probes import attention_stats as st
from mathlens.probes.attention import head_statistics
from mathlens.probes.attention_kernel import kernel_smoother_check, kernel_weights, mercer_test, nadaraya_watson


def _orthogonal(n, g):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _with_spectrum(s, g):
    n = len(s)
    return _orthogonal(n, g) @ torch.diag(torch.as_tensor(s, dtype=torch.float64)) @ _orthogonal(n, g).T


def test_ranks_of_prescribed_spectra_are_exact():
    g = torch.Generator().manual_seed(0)
    spectra = [[3.0, 2.0, 1.0, 0.5, 0.0, 0.0], [1.0] * 4 + [0.0] * 2, [5.0, 1e-3, 1e-3, 0, 0, 0]]
    A = torch.stack([_with_spectrum(s, g) for s in spectra])  # a batch (3, 6, 6)
    for j, s in enumerate(spectra):
        s = torch.tensor(s, dtype=torch.float64)
        p = s[s > 0] / s.sum()
        assert st.effective_rank(A)[j].item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-12)
        assert st.effective_rank(A[j]).item() == pytest.approx(st.effective_rank(A)[j].item(), rel=1e-12)
        assert st.stable_rank(A)[j].item() == pytest.approx((s**2).sum().item() / s[0].item() ** 2, rel=1e-12)
        assert torch.allclose(st.cumulative_energy(A)[j], torch.cumsum(s, 0) / s.sum(), atol=1e-12)
    # four equal singular values: effective rank 4 exactly, stable rank 4
    assert st.effective_rank(A[1]).item() == pytest.approx(4.0, abs=1e-12)
    # Eckart–Young: spectrum (3,2,1,.5): rank-2 Frobenius error sqrt(1.25)/sqrt(14.25) ≈ 0.296
    assert st.rank_for_error(A[0], 0.30).item() == 2
    assert st.rank_for_error(A[0], 0.29).item() == 3
    assert st.rank_for_error(A[0], 1 / 3 + 1e-9, "spectral").item() == 2  # σ3/σ1 = 1/3
    assert st.rank_for_error(A[0], 0.0).item() == 4
    assert st.rank_for_error(A[2], 1e-3).item() == 1
    with pytest.raises(MathlensError):
        st.rank_for_error(A[0], 0.1, norm="nuclear")


def test_row_statistics_closed_forms():
    n = 7
    U = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    assert torch.allclose(st.row_entropy(U), torch.full((n,), math.log(n), dtype=torch.float64), atol=1e-14)
    assert torch.all(st.gini(U, causal=False).abs() < 1e-14)
    assert torch.allclose(st.normalised_entropy(U, causal=False), torch.ones(n, dtype=torch.float64))
    assert torch.allclose(st.top_k_mass(U, 3), torch.full((n,), 3 / n, dtype=torch.float64))
    assert torch.all(st.fraction_above(U, 1 / n - 1e-9, causal=False) == 1)
    # causal uniform rows: row i is uniform over i + 1 keys -> entropy log(i + 1), Gini 0
    C = torch.tril(torch.ones(n, n, dtype=torch.float64))
    C = C / C.sum(-1, keepdim=True)
    assert torch.allclose(st.row_entropy(C), torch.log(torch.arange(1, n + 1, dtype=torch.float64)), atol=1e-14)
    assert torch.all(st.gini(C, causal=True).abs() < 1e-14)
    ne = st.normalised_entropy(C, causal=True)
    assert math.isnan(ne[0].item()) and torch.allclose(ne[1:], torch.ones(n - 1, dtype=torch.float64))
    # one-hot rows: entropy exactly 0, Gini (m - 1)/m with m visible keys
    O = torch.zeros(n, n, dtype=torch.float64)
    O[torch.arange(n), torch.arange(n) // 2] = 1.0
    assert torch.all(st.row_entropy(O) == 0)
    m = torch.arange(1, n + 1, dtype=torch.float64)
    assert torch.allclose(st.gini(O, causal=True), (m - 1) / m, atol=1e-14)
    assert torch.all(st.top_k_mass(O, 1) == 1)
    assert torch.allclose(st.fraction_above(O, 0.5, causal=True), 1 / m)


def test_head_statistics_uniform_versus_one_hot():
    n = 16
    U = torch.full((2, 1, n, n), 1.0 / n, dtype=torch.float64)
    I = torch.eye(n, dtype=torch.float64).expand(2, 1, n, n)  # attends to itself: causal-valid
    u, d = head_statistics(torch.cat([U, I], 1), causal=False)
    assert u.normalised_entropy == pytest.approx(1.0) and u.effective_rank == pytest.approx(1.0)
    assert u.stable_rank == pytest.approx(1.0) and u.gini == pytest.approx(0.0, abs=1e-12)
    assert d.entropy == 0 and d.effective_rank == pytest.approx(n) and d.effective_rank_ratio == pytest.approx(1)
    assert d.rank_for_eps == n and u.rank_for_eps == 1 and d.energy_at_k == pytest.approx(0.25)
    assert set(u.to_dict()) >= {"layer", "head", "entropy", "stable_rank", "settings"}
    with pytest.raises(MathlensError):
        head_statistics(U[0])


def test_residual_ratio():
    u = torch.randn(3, 5, 4, dtype=torch.float64)
    assert torch.all(st.residual_ratio(u.mean(1, keepdim=True).expand(3, 5, 4)) < 1e-14)  # rank-1 (all equal)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # mean zero: ρ = 1
    assert st.residual_ratio(x).item() == pytest.approx(1.0)
    assert st.rank_collapse_profile([x[None], x[None] + 1]) == pytest.approx([1.0, math.sqrt(2 / 6)])
    # batched (equal shapes) and one state at a time (shapes differ) give the same numbers
    states = [torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    assert st.rank_collapse_profile(states) == pytest.approx([float(st.residual_ratio(u).mean()) for u in states],
                                                              rel=1e-14)
    assert st.rank_collapse_profile([x[None], x[None, :, :1]]) == pytest.approx([1.0, 1.0])  # (1,2,2), (1,2,1)
    assert max(st.rank_collapse_profile([u.mean(1, keepdim=True).expand(3, 5, 4)] * 2)) < 1e-14  # collapsed states


def test_nadaraya_watson_and_convex_hull_on_synthetic_heads():
    g = torch.Generator().manual_seed(1)
    B, H, Hkv, T, d = 2, 4, 2, 9, 5
    q = torch.randn(B, H, T, d, generator=g, dtype=torch.float64) * 3
    k = torch.randn(B, Hkv, T, d, generator=g, dtype=torch.float64) * 3
    v = torch.randn(B, Hkv, T, 3, generator=g, dtype=torch.float64)
    kr = k.repeat_interleave(2, 1)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    ref = torch.nn.functional.scaled_dot_product_attention(q, kr, v.repeat_interleave(2, 1), attn_mask=mask, scale=0.3)
    assert torch.allclose(nadaraya_watson(q, k, v, 0.3), ref, atol=1e-13)
    W = kernel_weights(q, k, 0.3)
    assert torch.all(W.triu(1) == 0) and torch.allclose(W.sum(-1), torch.ones(B, H, T, dtype=torch.float64))
    ok = kernel_smoother_check(q, k, v, ref, 0.3)
    assert ok.nw_max_residual < 1e-13 and ok.hull_max_violation == 0 and ok.weights_min >= 0
    bad = kernel_smoother_check(q, k, v, ref + 10.0, 0.3)  # pushed outside the hull
    assert bad.hull_max_violation > 5 and bad.nw_max_residual == pytest.approx(10.0)


def test_mercer_verdicts():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(8, 3, generator=g, dtype=torch.float64)
    psd = mercer_test(W, W)  # M = W Wᵀ: symmetric PSD
    assert psd.verdict == "Mercer possible" and psd.asym < 1e-12 and psd.lambda_min > -1e-12
    neg = mercer_test(W, -W)  # symmetric negative semi-definite
    assert neg.verdict == "non-Mercer" and neg.asym < 1e-12 and neg.frac_negative == pytest.approx(3 / 8)
    A = torch.randn(8, 3, generator=g, dtype=torch.float64)
    gen = mercer_test(W, A)
    assert gen.verdict == "non-Mercer" and gen.asym > 0.1 and gen.lambda_min < 0 < gen.lambda_max
    assert mercer_test(torch.eye(4), -torch.eye(4).flip(0)).asym == pytest.approx(0.0)  # M = −J symmetric


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_sorted_row_statistics_equal_top_k_mass_gini_and_fraction_above(n):
    """One sort (NumPy on the CPU) gives exactly the per-row top-k mass, Gini and fraction above τ."""
    g = torch.Generator().manual_seed(n)
    S = 3 * torch.randn(3, 2, n, n, dtype=torch.float64, generator=g)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    P = torch.softmax(S.masked_fill(~causal, float("-inf")), -1)
    P[0, 0, -1] = torch.nn.functional.one_hot(torch.tensor(0), n).double()  # a one-hot row
    if n >= 4:  # a row with entries exactly at τ = 0.25: "above" is strict
        P[1, 1, 3] = torch.tensor([0.25, 0.25, 0.25, 0.25] + [0.0] * (n - 4), dtype=torch.float64)
    for k in (1, 3, 100):
        mass, gi = st.sorted_row_statistics(P, k, causal=True)
        assert torch.allclose(mass, st.top_k_mass(P, k), atol=1e-14, rtol=0)
        assert torch.allclose(gi, st.gini(P, causal=True), atol=1e-14, rtol=0)
    for tau in (0.0, 0.1, 0.25, 1.0):  # the fraction above τ by binary search in the sorted rows: exactly the count
        for X in (P, P.float()):
            *_, frac = st.sorted_row_statistics(X, 2, causal=True, tau=tau)
            assert torch.equal(frac, st.fraction_above(X, tau, causal=True))
    Q = torch.softmax(S, -1)
    mass, gi, frac = st.sorted_row_statistics(Q, 2, causal=False, tau=0.1)
    assert torch.allclose(mass, st.top_k_mass(Q, 2), atol=1e-14, rtol=0)
    assert torch.allclose(gi, st.gini(Q, causal=False), atol=1e-14, rtol=0)
    assert torch.equal(frac, st.fraction_above(Q, 0.1, causal=False))


def test_gini_leaves_given_sorted_rows_intact_and_entropy_from_scores_is_exact():
    """gini() works in place only on a sort of its own; row_entropy_from_scores: uniform rows log m, one-hot rows 0."""
    g = torch.Generator().manual_seed(1)
    P = torch.softmax(torch.randn(2, 7, 7, dtype=torch.float64, generator=g), -1)
    xs = st.sort_rows(P)
    before = xs.clone()
    assert torch.allclose(st.gini(P, causal=False, sorted_rows=xs), st.gini(P, causal=False), atol=1e-15, rtol=0)
    assert torch.equal(xs, before)
    n = 5
    mask = torch.full((n, n), torch.finfo(torch.float64).min / 2, dtype=torch.float64).triu(1)
    for S, expect in ((mask, torch.log(torch.arange(1, n + 1, dtype=torch.float64))),  # uniform over i + 1 keys
                      (mask + 800 * torch.eye(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64))):  # one-hot
        Pr = torch.softmax(S, -1)
        assert torch.allclose(st.row_entropy_from_scores(Pr, S), expect, atol=1e-13, rtol=0)
        assert torch.allclose(st.row_entropy_from_scores(Pr, S), st.row_entropy(Pr), atol=1e-13, rtol=0)


def test_singular_values_of_float32_patterns_match_the_float64_svd():
    """Lower-precision P goes through the float64 Gram matrix: every σ within 1e-6 ‖P‖₂ of LAPACK's SVD of the
    same (float32-valued) matrix, and the spectral statistics agree to the same order."""
    g = torch.Generator().manual_seed(0)
    n = 96
    S = 4 * torch.randn(5, n, n, generator=g)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    P = torch.softmax(S.masked_fill(~causal, float("-inf")), -1)  # float32, with tiny singular values
    exact = torch.linalg.svdvals(P.double())
    got = st.singular_values(P)
    assert got.dtype == torch.float64 and got.shape == exact.shape
    assert torch.all(got[..., :-1] >= got[..., 1:])  # descending
    assert (got - exact).abs().max() <= 1e-6 * exact[..., :1].min()
    assert torch.allclose(st.effective_rank(P), st.effective_rank(P.double()), rtol=1e-6)
    assert torch.allclose(st.stable_rank(P), st.stable_rank(P.double()), rtol=1e-6)
    assert torch.equal(st.rank_for_error(P, 0.1), st.rank_for_error(P.double(), 0.1))
    wide = P[:, :40]  # (5, 40, 96): the Gram of the smaller side
    assert torch.allclose(st.singular_values(wide), torch.linalg.svdvals(wide.double()), atol=1e-6)


def test_zero_matrix_has_effective_rank_zero_and_negative_thresholds_are_refused():
    assert st.effective_rank(torch.zeros(2, 4, 4, dtype=torch.float64)).tolist() == [0.0, 0.0]
    assert st.effective_rank(torch.eye(4, dtype=torch.float64)).item() == pytest.approx(4.0, rel=1e-14)
    P = torch.tril(torch.ones(4, 4, dtype=torch.float64))
    P = P / P.sum(-1, keepdim=True)
    for f in (lambda: st.fraction_above(P, -0.01), lambda: st.sorted_row_statistics(P, 2, True, tau=-0.01)):
        with pytest.raises(MathlensError, match="tau must be"):
            f()
    assert st.fraction_above(P, 0.0).tolist() == [1.0, 1.0, 1.0, 1.0]  # every visible weight, no masked zero
