"""Hessian / Gauss–Newton operators against dense Hessians and closed forms (float64)."""

import pytest
import torch
import torch.nn.functional as F
from test_curvature_helpers import attention_problem, dense_hessian, mlp_problem
from torch import nn

from mathlens.errors import MathlensError
from mathlens.probes.curvature import GaussNewtonOperator, HessianOperator, ParamSpace
from mathlens.probes.curvature.operators import relative_error


@pytest.mark.parametrize("problem", [mlp_problem, attention_problem])
@pytest.mark.parametrize("method", ["double_backward", "jvp"])
def test_exact_hvp_matches_dense_hessian(problem, method):
    model, loss_fn, batches = problem()
    H = dense_hessian(model, loss_fn, batches)
    op = HessianOperator(model, loss_fn, batches, method=method)
    assert relative_error(op.dense(), H) <= 1e-8
    assert op.n_matvecs == H.shape[0]


@pytest.mark.parametrize("problem", [mlp_problem, attention_problem])
@pytest.mark.parametrize("reuse", [True, False])
def test_double_backward_reusing_the_first_order_graph(problem, reuse):
    """Kept first-order graphs (one per batch; mlp_problem has two) give the dense Hessian, and the same
    products as rebuilding the graph each time; release() frees them and the next product rebuilds them."""
    model, loss_fn, batches = problem()
    H = dense_hessian(model, loss_fn, batches)
    op = HessianOperator(model, loss_fn, batches, reuse_graph=reuse)
    assert op.reuse_graph is reuse and HessianOperator(model, loss_fn, batches).reuse_graph is (len(batches) == 1)
    assert relative_error(op.dense(), H) <= 1e-8
    assert (op._graphs is not None) is reuse
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fresh = HessianOperator(model, loss_fn, batches, reuse_graph=False).matvec(v)
    assert relative_error(op.matvec(v), fresh) <= 1e-13
    op.release()
    assert op._graphs is None and relative_error(op.matvec(v), fresh) <= 1e-13


@pytest.mark.parametrize("problem", [mlp_problem, attention_problem])
def test_finite_difference_hvp(problem):
    # Central differences: truncation error ~ τ²‖∇³L‖, round-off ~ eps‖∇L‖/τ. With the default relative
    # step τ = 0.2·eps^{1/3} ≈ 1.2e-6 in float64 both terms are ~1e-10 relative; 1e-6 leaves ample margin.
    model, loss_fn, batches = problem()
    H = dense_hessian(model, loss_fn, batches)
    op = HessianOperator(model, loss_fn, batches, method="finite_difference")
    assert relative_error(op.dense(), H) <= 1e-6
    # a coarse step is visibly worse: the error grows like τ² (truncation)
    coarse = HessianOperator(model, loss_fn, batches, method="finite_difference", fd_step=1e-2)
    err = relative_error(coarse.dense(), H)
    assert 1e-8 < err < 1e-2
    # forward differences (one gradient per product, ∇L(w) cached): error O(τ) + O(eps/τ) ~ 1e-8 at τ ~ √eps
    fwd = HessianOperator(model, loss_fn, batches, method="finite_difference", fd_scheme="forward")
    assert relative_error(fwd.dense(), H) <= 1e-5


def test_fused_attention_exact_hvp_and_finite_difference():
    model, loss_fn, batches = attention_problem(fused=True)
    H = dense_hessian(attention_problem(fused=False)[0], loss_fn, batches)
    with pytest.raises(MathlensError, match="fused attention"):
        HessianOperator(model, loss_fn, batches, method="double_backward", attention="model").matvec(
            torch.ones(ParamSpace(model).size, dtype=torch.float64))
    with pytest.raises(MathlensError, match="fused attention"):
        HessianOperator(model, loss_fn, batches, method="jvp", attention="model").matvec(
            torch.ones(ParamSpace(model).size, dtype=torch.float64))
    assert relative_error(HessianOperator(model, loss_fn, batches).dense(), H) <= 1e-8  # math backend forced
    fd = HessianOperator(model, loss_fn, batches, method="finite_difference", attention="model")
    assert relative_error(fd.dense(), H) <= 1e-6


def _linear_data(n=20, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return X, y


def test_linear_regression_closed_form():
    X, y = _linear_data()
    model = nn.Linear(4, 1, bias=False).double()
    loss_fn = lambda m, b: F.mse_loss(m(b[0]), b[1])  # mean_i (x_iᵀw − y_i)² -> H = 2 XᵀX / n
    H = HessianOperator(model, loss_fn, [(X, y)]).dense()
    assert torch.allclose(H, 2 * X.T @ X / X.shape[0], rtol=1e-12, atol=1e-12)
    # two equal batches: the mean over batches is the same matrix
    H2 = HessianOperator(model, loss_fn, [(X[:10], y[:10]), (X[10:], y[10:])]).dense()
    assert torch.allclose(H2, H, rtol=1e-12, atol=1e-12)
    # PyTorch lacks forward-mode AD through mse_loss's backward: a clear error, not a traceback
    with pytest.raises(MathlensError, match="forward-over-reverse"):
        HessianOperator(model, loss_fn, [(X, y)], method="jvp").matvec(torch.ones(4, dtype=torch.float64))


def test_logistic_regression_closed_form():
    X, _ = _linear_data(n=30, d=3)
    t = (torch.arange(30) % 2).double()
    model = nn.Linear(3, 1, bias=False).double()
    loss_fn = lambda m, b: F.binary_cross_entropy_with_logits(m(b[0]).squeeze(-1), b[1])
    p = torch.sigmoid(model(X).squeeze(-1)).detach()
    expected = X.T @ torch.diag(p * (1 - p)) @ X / X.shape[0]
    for method in ("double_backward", "jvp"):
        H = HessianOperator(model, loss_fn, [(X, t)], method=method).dense()
        assert torch.allclose(H, expected, rtol=1e-12, atol=1e-14)


def test_gauss_newton_equals_hessian_for_linear_mse_and_is_psd():
    X, _ = _linear_data(n=16, d=3)
    Y = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model = nn.Linear(3, 2).double()
    loss_fn = lambda m, b: F.mse_loss(m(b[0]), b[1])
    G = GaussNewtonOperator(model, lambda m, b: (m(b[0]), b[1]), [(X, Y)], loss="mse").dense()
    H = HessianOperator(model, loss_fn, [(X, Y)]).dense()
    assert relative_error(G, H) <= 1e-12
    # non-linear model, cross-entropy: GN is symmetric PSD and differs from the (indefinite) Hessian
    model2, loss2, batches = attention_problem()
    G2 = GaussNewtonOperator(model2, lambda m, b: m(b[0]).reshape(-1, 5), batches).dense()
    assert relative_error(G2, G2.T) <= 1e-12
    ev = torch.linalg.eigvalsh(G2)
    assert ev.min() >= -1e-12 * ev.max()
    assert relative_error(G2, dense_hessian(model2, loss2, batches)) > 1e-3


def test_param_space_roundtrip_and_errors():
    model, loss_fn, batches = mlp_problem()
    space = ParamSpace(model)
    w = space.get()
    assert w.shape == (sum(p.numel() for p in model.parameters()),)
    space.set_(2 * w)
    assert torch.equal(space.get(), 2 * w)
    assert torch.equal(space.flatten(space.unflatten(w)), w)
    with pytest.raises(MathlensError, match="shape"):
        space.unflatten(w[:-1])
    with pytest.raises(MathlensError, match="empty"):
        HessianOperator(model, loss_fn, [])
    with pytest.raises(MathlensError, match="unknown Hessian-vector method"):
        HessianOperator(model, loss_fn, batches, method="magic")
    with pytest.raises(MathlensError, match="scalar"):
        HessianOperator(model, lambda m, b: m(b[0]), batches).matvec(w)


def test_operator_restores_train_mode():
    model, loss_fn, batches = mlp_problem()
    model.train()
    HessianOperator(model, loss_fn, batches).matvec(torch.ones(ParamSpace(model).size, dtype=torch.float64))
    assert model.training and model.fc1.training


def test_mathlens_gpt_fused_attention_paths():
    mathlens = pytest.importorskip("mathlens")
    torch.manual_seed(0)
    model = mathlens.GPT(mathlens.GPTConfig(vocab_size=7, block_size=6, n_layer=1, n_head=2, n_embd=8)).double()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randint(0, 7, (2, 6), generator=g), torch.randint(0, 7, (2, 6), generator=g))

    def loss_fn(m, b):  # float64 cross-entropy (GPT's own loss is computed in float32)
        logits, _ = m(b[0])
        return F.cross_entropy(logits.reshape(-1, 7), b[1].reshape(-1))

    n = ParamSpace(model).size
    v = torch.randn(n, generator=g, dtype=torch.float64)
    with pytest.raises(MathlensError, match="fused attention"):
        HessianOperator(model, loss_fn, [batch], attention="model").matvec(v)
    exact = HessianOperator(model, loss_fn, [batch]).matvec(v)  # math backend forced
    assert relative_error(HessianOperator(model, loss_fn, [batch], method="jvp").matvec(v), exact) <= 1e-10
    fd = HessianOperator(model, loss_fn, [batch], method="finite_difference", attention="model").matvec(v)
    assert relative_error(fd, exact) <= 1e-6


def test_loss_linear_in_the_parameters_has_a_zero_hessian():
    """∇L of a loss linear in w carries no graph; the double-backward product is then exactly zero, not an error."""
    model = torch.nn.Linear(3, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = HessianOperator(model, lambda m, b: m(b).sum(), [x, 2 * x])
    assert torch.equal(op.matvec(torch.ones(4, dtype=torch.float64)), torch.zeros(4, dtype=torch.float64))
