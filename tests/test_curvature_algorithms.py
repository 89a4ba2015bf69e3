"""Lanczos, power iteration, Hutchinson/Hutch++ and SLQ against dense linear algebra (float64)."""

import numpy as np
import pytest
import torch
from test_curvature_helpers import attention_problem, dense_hessian, mlp_problem

from mathlens.errors import MathlensError
from mathlens.probes.curvature import (
    MatrixOperator,
    eigsh_top,
    hessian_trace,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
    slq_density,
    spectral_density,
    top_eigenvalues,
)


def _sym(n, seed, eigenvalues=None):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.randn(n, generator=g, dtype=torch.float64) if eigenvalues is None else eigenvalues
    return (Q * lam) @ Q.T


@pytest.mark.parametrize("problem", [mlp_problem, attention_problem])
def test_top_eigenvalues_match_dense(problem):
    model, loss_fn, batches = problem()
    ev = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, batches)).flip(0)
    res = top_eigenvalues(model, loss_fn, batches, k=3, tol=1e-10, return_eigenvectors=True)
    assert res.converged and res.eigenvalues == sorted(res.eigenvalues, reverse=True)
    np.testing.assert_allclose(res.eigenvalues, ev[:3].numpy(), rtol=1e-8)
    assert res.eigenvectors.shape == (3, ev.numel())
    # second implementation: SciPy ARPACK on the same operator
    res2 = top_eigenvalues(model, loss_fn, batches, k=3, method="eigsh", tol=1e-12)
    np.testing.assert_allclose(res2.eigenvalues, ev[:3].numpy(), rtol=1e-8)
    assert set(res.to_dict()) >= {"eigenvalues", "n_matvecs", "wall_time_s"}


def test_lanczos_on_matrix_eigenvectors_and_warm_start():
    A = _sym(120, seed=1)
    op = MatrixOperator(A)
    lam, U = torch.linalg.eigh(A)
    res = lanczos(op, k=4, tol=1e-10, max_iter=120, seed=3)
    np.testing.assert_allclose(res.eigenvalues, lam.flip(0)[:4].numpy(), rtol=1e-8)
    for i in range(4):  # Ritz vectors are eigenvectors (up to sign)
        assert abs(float(res.eigenvectors[i] @ U[:, -1 - i])) > 1 - 1e-6
    # warm start from the converged top vector: converged after 2 matvecs
    warm = lanczos(MatrixOperator(A), k=1, tol=1e-6, v0=res.eigenvectors[0])
    assert warm.n_matvecs <= 2 and abs(warm.eigenvalues[0] - float(lam[-1])) < 1e-8
    # smallest / largest-magnitude variants
    sa = lanczos(MatrixOperator(A), k=1, tol=1e-10, max_iter=120, which="SA")
    assert abs(sa.eigenvalues[0] - float(lam[0])) < 1e-8
    with pytest.raises(MathlensError):
        lanczos(op, k=0)


def test_lanczos_finds_every_copy_of_a_repeated_eigenvalue():
    # one Krylov space holds one direction per eigenspace: without the deflation check the second 5 is missed
    rest = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, 197))
    B = _sym(200, seed=0, eigenvalues=torch.cat([torch.tensor([5.0, 5.0, 4.9], dtype=torch.float64), rest]))
    plain = lanczos(MatrixOperator(B), k=2, tol=1e-8, check_multiplicity=False)
    assert plain.converged and plain.eigenvalues == pytest.approx([5.0, 4.9], rel=1e-8)  # the blind spot
    assert lanczos(MatrixOperator(B), k=2, tol=1e-8).eigenvalues == pytest.approx([5.0, 5.0], rel=1e-8)
    lam = torch.cat([torch.tensor([5.0, 5.0, 4.9, 5.0], dtype=torch.float64), rest[:96]])
    A = _sym(100, seed=3, eigenvalues=lam)
    res = lanczos(MatrixOperator(A), k=4, tol=1e-8)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues, [5, 5, 5, 4.9], rtol=1e-7)
    V = res.eigenvectors
    np.testing.assert_allclose((V @ V.T).numpy(), np.eye(4), atol=1e-7)  # three independent vectors for 5
    residuals = torch.linalg.norm(V @ A - torch.tensor(res.eigenvalues, dtype=A.dtype)[:, None] * V, dim=1)
    assert float(residuals.max()) < 1e-6
    assert res.n_matvecs > lanczos(MatrixOperator(A), k=4, tol=1e-8, check_multiplicity=False).n_matvecs  # counted
    assert lanczos(MatrixOperator(A), k=1, tol=1e-8).eigenvalues == pytest.approx([5.0], rel=1e-8)  # no check needed


@pytest.mark.parametrize("lam, k", [([1.0] * 5, 2), ([7.0] + [0.0] * 19, 3), ([2.0, 1.0, 1.0], 3)])
def test_lanczos_restarts_after_an_invariant_subspace(lam, k):
    A = _sym(len(lam), seed=4, eigenvalues=torch.tensor(lam, dtype=torch.float64))
    res = lanczos(MatrixOperator(A), k=k, tol=1e-10)
    assert res.converged and len(res.eigenvalues) == k and res.eigenvectors.shape == (k, len(lam))
    np.testing.assert_allclose(res.eigenvalues, sorted(lam, reverse=True)[:k], atol=1e-10)


def test_power_iteration_and_eigsh_reject_bad_k_and_handle_the_null_space():
    A = _sym(2, seed=5, eigenvalues=torch.tensor([3.0, 1.0], dtype=torch.float64))
    with pytest.raises(MathlensError, match="k must be between 1 and"):
        power_iteration(MatrixOperator(A), k=3)
    with pytest.raises(MathlensError, match="ARPACK needs"):
        eigsh_top(MatrixOperator(A), k=2)
    zero = power_iteration(MatrixOperator(torch.zeros(4, 4, dtype=torch.float64)))
    assert zero.eigenvalues == [0.0] and zero.converged


def test_eigsh_second_implementation_agrees():
    A = _sym(80, seed=2)
    a = lanczos(MatrixOperator(A), k=3, tol=1e-12, max_iter=80)
    b = eigsh_top(MatrixOperator(A), k=3, tol=1e-12)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-9)


def test_power_iteration_converges_to_lambda_max():
    lam = torch.cat([torch.tensor([10.0, 5.0]), torch.rand(58, generator=torch.Generator().manual_seed(0))])
    A = _sym(60, seed=4, eigenvalues=lam.double())
    res = power_iteration(MatrixOperator(A), k=2, max_iter=500, tol=1e-12, seed=0)
    np.testing.assert_allclose(res.eigenvalues, [10.0, 5.0], rtol=1e-8)
    # PyHessian's stopping rule at tol=1e-3 stops early: fewer matvecs, error of the order of tol
    quick = power_iteration(MatrixOperator(A), k=1, max_iter=100, tol=1e-3, seed=0)
    assert quick.converged and quick.n_matvecs < 20 and abs(quick.eigenvalues[0] - 10) / 10 < 1e-2


def test_hutchinson_within_standard_error_and_hutchpp_better_on_low_rank():
    n = 300
    g = torch.Generator().manual_seed(5)
    lam = torch.cat([100.0 * torch.rand(20, generator=g), 0.1 * torch.rand(n - 20, generator=g)]).double()
    A = _sym(n, seed=6, eigenvalues=lam)
    tr = float(lam.sum())
    err_h, err_pp = [], []
    for seed in range(4):
        h = hutchinson(MatrixOperator(A), n_samples=60, seed=seed)
        p = hutchpp(MatrixOperator(A), n_matvecs=60, seed=seed)
        assert h.n_matvecs == p.n_matvecs == 60
        assert abs(h.trace - tr) <= 4 * h.std_error
        assert abs(p.trace - tr) <= 4 * p.std_error
        err_h.append(abs(h.trace - tr))
        err_pp.append(abs(p.trace - tr))
    # low rank + small noise: Hutch++ captures the top-20 exactly, its residual variance is tiny
    assert np.mean(err_pp) < 0.05 * np.mean(err_h)
    with pytest.raises(MathlensError):
        hutchpp(MatrixOperator(A), n_matvecs=5)


def test_hessian_trace_on_model():
    model, loss_fn, batches = attention_problem()
    tr = float(torch.trace(dense_hessian(model, loss_fn, batches)))
    for method in ("hutchinson", "hutch++"):
        res = hessian_trace(model, loss_fn, batches, n_samples=30, seed=1, method=method)
        assert abs(res.trace - tr) <= 4 * res.std_error and res.std_error > 0
        assert res.to_dict()["method"] == method


def test_slq_density_integrates_to_one_and_matches_histogram():
    n = 40
    lam = torch.cat([torch.linspace(-1, 0, 10), torch.linspace(2, 3, 20), torch.linspace(8, 9, 10)]).double()
    A = _sym(n, seed=7, eigenvalues=lam)
    res = slq_density(MatrixOperator(A), n_probes=20, n_iter=n, seed=0, n_grid=4000, sigma_rel=0.01)
    grid, dens = np.array(res.grid), np.array(res.density)
    assert abs(np.trapezoid(dens, grid) - 1) < 1e-6
    edges = [-2, 1, 5, 10]
    for lo, hi in zip(edges[:-1], edges[1:]):
        exact = float(((lam >= lo) & (lam < hi)).double().mean())
        # per probe the bin mass is Beta-distributed with std ≤ sqrt(p(1-p)/(n/2+1)) ≈ 0.1; 20 probes -> 0.022
        assert abs(res.mass(lo, hi) - exact) < 0.09
        sel = (grid >= lo) & (grid < hi)
        assert abs(np.trapezoid(dens[sel], grid[sel]) - res.mass(lo, hi)) < 0.01
    # the nodes of a full-length Lanczos run are the eigenvalues
    assert np.allclose(np.sort(res.nodes[0]), lam.numpy(), atol=1e-8)
    # a degenerate spectrum (2·I): the Lanczos nodes differ by rounding units only, the density still integrates
    # to 1 and puts all its mass at 2
    deg = slq_density(MatrixOperator(2 * torch.eye(30, dtype=torch.float64)), n_probes=2, n_iter=10, seed=0)
    assert deg.sigma == pytest.approx(0.02)
    assert abs(np.trapezoid(deg.density, deg.grid) - 1) < 1e-6 and deg.mass(1.9, 2.1) == pytest.approx(1.0)


def test_spectral_density_on_model():
    model, loss_fn, batches = mlp_problem()
    ev = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, batches))
    res = spectral_density(model, loss_fn, batches, n_probes=3, n_iter=10, seed=0)
    assert abs(np.trapezoid(res.density, res.grid) - 1) < 1e-3
    # Gauss quadrature nodes lie inside the spectrum and the extreme ones converge first
    assert max(map(max, res.nodes)) <= float(ev[-1]) + 1e-9
    assert abs(max(map(max, res.nodes)) - float(ev[-1])) < 1e-3 * float(ev[-1])
    assert res.n_matvecs == 30
