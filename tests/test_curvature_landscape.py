"""Loss slices, empirical NTK and the training callback."""

import numpy as np
import pytest
import torch
from test_curvature_helpers import TinyMLP, attention_problem, dense_hessian, mlp_problem
from torch import nn

from mathlens.errors import MathlensError
from mathlens.probes.curvature import (
    CurvatureTracker,
    ParamSpace,
    empirical_ntk,
    filter_normalized_direction,
    kernel_target_alignment,
    loss_slice_1d,
    loss_surface_2d,
    ntk_change,
    plot_landscape,
)
from mathlens.probes.curvature.operators import ModelLoss


def test_filter_normalized_direction():
    model = TinyMLP()
    d = filter_normalized_direction(model, seed=0)
    parts = ParamSpace(model).unflatten(d)
    W1 = model.fc1.weight.detach()
    assert torch.allclose(parts[0].norm(dim=1), W1.norm(dim=1), rtol=1e-12)  # filter norms match
    assert float(parts[1].abs().max()) == 0.0  # biases ignored
    assert torch.equal(d, filter_normalized_direction(model, seed=0))
    assert not torch.equal(d, filter_normalized_direction(model, seed=1))
    d1 = ParamSpace(model).unflatten(filter_normalized_direction(model, seed=0, include_1d=True))
    assert abs(float(d1[1].norm()) - float(model.fc1.bias.detach().norm())) < 1e-12


@pytest.mark.parametrize("problem", [mlp_problem, attention_problem])
def test_slices_match_direct_evaluation_and_quadratic_model(problem):
    model, loss_fn, batches = problem()
    f = ModelLoss(model, loss_fn, batches)
    alphas = np.linspace(-0.5, 0.5, 7)
    res = loss_slice_1d(model, loss_fn, batches, alphas=alphas, seed=2, chunk=3)
    assert res.vectorized
    d = filter_normalized_direction(model, seed=2)
    direct = [f.value(f.w0 + a * d) for a in alphas]
    np.testing.assert_allclose(res.losses, direct, rtol=1e-12)
    loop = loss_slice_1d(model, loss_fn, batches, alphas=alphas, seed=2, vectorize=False)
    assert not loop.vectorized and np.allclose(loop.losses, res.losses, rtol=1e-12)
    # near α = 0 the slice is the quadratic ½ α² dᵀHd (+ α gᵀd): second difference = dᵀHd
    h = 1e-3
    tiny = loss_slice_1d(model, loss_fn, batches, alphas=[-h, 0, h], seed=2).losses
    curv = (tiny[0] - 2 * tiny[1] + tiny[2]) / h**2
    H = dense_hessian(model, loss_fn, batches)
    assert curv == pytest.approx(float(d @ H @ d), rel=1e-5)
    # 2-D surface: the β = 0 column is the 1-D slice along d₁
    surf = loss_surface_2d(model, loss_fn, batches, alphas=alphas, betas=[-0.2, 0.0, 0.2], seed=2, chunk=5)
    L = np.array(surf.losses)
    assert L.shape == (7, 3) and np.allclose(L[:, 1], res.losses, rtol=1e-12)
    assert surf.center_loss == pytest.approx(f.value())


def test_vmap_failure_falls_back_to_loop():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))

        def forward(self, x):
            return (self.w**2).sum() if float(self.w.sum()) > 0 else self.w.sum()  # .item-like control flow

    model = DataDependent()
    res = loss_slice_1d(model, lambda m, b: m(b), [None], alphas=[0.0, 1.0], direction=torch.tensor([1.0, 0.0]))
    assert not res.vectorized and res.losses == pytest.approx([5.0, 8.0])


def test_plot_landscape_figures():
    model, loss_fn, batches = mlp_problem()
    one = loss_slice_1d(model, loss_fn, batches, alphas=np.linspace(-1, 1, 5))
    two = loss_surface_2d(model, loss_fn, batches, alphas=np.linspace(-1, 1, 4), betas=np.linspace(-1, 1, 3))
    from matplotlib.figure import Figure

    for fig in (plot_landscape(one), plot_landscape(two), plot_landscape(two, kind="surface", title="t")):
        assert isinstance(fig, Figure) and fig.axes
    with pytest.raises(MathlensError):
        plot_landscape(two, kind="pie")
    with pytest.raises(MathlensError):
        loss_slice_1d(model, loss_fn, batches, alphas=[])


def test_empirical_ntk_linear_closed_form():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 3, generator=g, dtype=torch.float64)
    model = nn.Linear(3, 2).double()
    out = lambda m, x: m(x)
    # f_ic = W_c·x_i + b_c: ∂f_ic/∂W = e_c x_iᵀ, ∂f_ic/∂b = e_c -> K_(ic),(jc') = δ_cc' (x_iᵀx_j + 1)
    G = X @ X.T + 1
    full = empirical_ntk(model, out, X, mode="full")
    assert torch.allclose(full.kernel, torch.kron(G, torch.eye(2, dtype=torch.float64)), atol=1e-12)
    tr = empirical_ntk(model, out, X, mode="trace", chunk_size=3)
    assert torch.allclose(tr.kernel, 2 * G, atol=1e-12)
    assert tr.eigenvalues == sorted(tr.eigenvalues, reverse=True)
    assert tr.to_dict()["trace"] == pytest.approx(float(torch.trace(2 * G)))
    # the NTK of a linear model does not depend on the weights: no change after moving them (lazy)
    with torch.no_grad():
        model.weight.mul_(3.0)
    assert ntk_change(tr, empirical_ntk(model, out, X)) < 1e-12


def test_ntk_matches_explicit_jacobian_and_alignment():
    model = TinyMLP(seed=1)
    X = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = empirical_ntk(model, lambda m, x: m(x), X, mode="full")
    rows = []
    for i in range(4):
        for c in range(2):
            gs = torch.autograd.grad(model(X[i: i + 1])[0, c], list(model.parameters()))
            rows.append(torch.cat([g.reshape(-1) for g in gs]))
    J = torch.stack(rows)
    assert torch.allclose(res.kernel, J @ J.T, atol=1e-12)
    # alignment: K = YYᵀ gives 1; K = diag(1,1,0,0), y = (1,0,−1,0): ⟨K, yyᵀ⟩ = 1, ‖K‖ = √2, ‖yyᵀ‖ = 2
    Y = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    assert kernel_target_alignment(torch.outer(Y, Y), Y) == pytest.approx(1.0)
    assert kernel_target_alignment(torch.diag(torch.tensor([1.0, 1, 0, 0])), torch.tensor([1.0, 0, -1, 0]),
                                   ) == pytest.approx(1 / (2 * 2**0.5))
    a = kernel_target_alignment(res.kernel, torch.randn(8, dtype=torch.float64))
    assert -1 <= a <= 1
    # a non-linear model's NTK moves when the weights move
    K0 = empirical_ntk(model, lambda m, x: m(x), X)
    with torch.no_grad():
        model.fc1.weight.mul_(2.0)
    assert ntk_change(K0, empirical_ntk(model, lambda m, x: m(x), X)) > 0.05
    with pytest.raises(MathlensError):
        ntk_change(K0.kernel, torch.zeros(3, 3))


def test_curvature_tracker_every_k_warm_start_and_eos():
    model, loss_fn, batches = mlp_problem()
    lam = float(torch.linalg.eigvalsh(dense_hessian(model, loss_fn, batches))[-1])
    tracker = CurvatureTracker(loss_fn, batches, every=2, k_top=2, trace_samples=4, seed=0, lanczos_iter=26,
                               tol=1e-10)
    assert tracker(1, model, {}) is None
    out = tracker(2, model, {"lr": 0.1})
    assert out["curvature/lambda_max"] == pytest.approx(lam, rel=1e-8)
    assert out["curvature/lambda_2"] <= out["curvature/lambda_max"]
    assert out["curvature/two_over_lr"] == pytest.approx(20.0)
    assert out["curvature/eos_ratio"] == pytest.approx(lam * 0.1 / 2)
    assert "curvature/trace" in out and out["curvature/trace_stderr"] > 0
    # warm start: at unchanged weights Lanczos from the previous top eigenvector converges at once
    k1 = CurvatureTracker(loss_fn, batches, every=1, lanczos_iter=26, tol=1e-6)
    first = k1(0, model, {})["curvature/lanczos_matvecs"]
    second = k1(1, model, {})["curvature/lanczos_matvecs"]
    assert second <= 2 < first and len(k1.history) == 2
    # during training (SGD steps) it runs and merges plain floats
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(3):
        opt.zero_grad()
        loss_fn(model, batches[0]).backward()
        opt.step()
        k1(step, model, {"loss": 0.0})
    assert all(isinstance(v, float | int) for v in k1.history[-1].values())
    with pytest.raises(MathlensError):
        CurvatureTracker(loss_fn, batches, every=0)


def test_results_are_json_ready():
    import json

    from mathlens.probes.curvature import hessian_trace, spectral_density, top_eigenvalues

    model, loss_fn, batches = mlp_problem()
    X = batches[0][0]
    results = [
        top_eigenvalues(model, loss_fn, batches, k=2, return_eigenvectors=True),
        hessian_trace(model, loss_fn, batches, n_samples=4),
        spectral_density(model, loss_fn, batches, n_probes=1, n_iter=4, n_grid=20),
        loss_slice_1d(model, loss_fn, batches, alphas=[0.0, 0.5]),
        empirical_ntk(model, lambda m, x: m(x), X),
    ]
    for r in results:
        back = json.loads(json.dumps(r.to_dict()))
        assert isinstance(back, dict) and back
