"""Predictions 6, 7 (order in depth), 8 (clustering), 11 (confinement to S2), 13 (quadrature in x).

Test problem (THEORY §13): N_x = 6, N_y = 12, T = 1, θ(t) linear in t between two random control points, tanh
FFN (no S2), scalar LayerNorm with eps = 0, u0 on S1. Reference: RK4 on the tangent-projected ODE with 128
steps. Its Richardson error estimate (~1e-9) is reported and asserted to be below 1e-3 × the smallest
measured error, so it cannot bias the fitted slopes (a 1e-3 relative perturbation of one error changes a
5-point log-log slope by < 1e-3).
"""

import pytest
import torch

from mathlens.flow.convergence import convergence_model, convergence_study, reference_with_error
from mathlens.flow.limits import attention_quadrature, clustering, literal_confinement, score_variance

N_STEPS = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def problem():
    model, u0 = convergence_model(seed=0)
    return model, u0, reference_with_error(model, u0, 128)


@pytest.mark.parametrize("scheme, order", [("lie", 1.0), ("parallel", 1.0), ("strang", 1.0), ("strang_heun", 2.0),
                                           ("strang_heun_ambient", 1.0)])
def test_predictions6_7_order_in_depth(problem, scheme, order):
    model, u0, ref = problem
    r = convergence_study(scheme, N_STEPS, model=model, u0=u0, reference=ref, reference_steps=128)
    # Heun on the unprojected fields leaves first order (THEORY §13): the tangent projection is what matters
    assert r.reference_error < 1e-3 * min(r.errors)
    assert abs(r.order - order) <= 0.15, r.to_dict()
    assert r.order_ci[0] <= r.order <= r.order_ci[1]
    assert all(e2 < e1 for e1, e2 in zip(r.errors, r.errors[1:]))  # refining the depth always helps
    # the splitting error (split − unsplit Euler-projection) is reported and is itself first order
    assert len(r.splitting_errors) == len(N_STEPS)
    if scheme == "parallel":
        assert max(r.splitting_errors) == 0.0 and r.splitting_order is None
    else:
        assert abs(r.splitting_order - 1.0) <= 0.15
    assert set(r.to_dict()) >= {"errors", "order", "order_ci", "splitting_errors", "reference_error"}


def test_splitting_error_vanishes_when_the_operators_commute(problem):
    _, u0, _ = problem
    model = convergence_model(seed=0)[0]  # a fresh copy: the fixture's model stays intact
    with torch.no_grad():
        for name, p in model.controls.items():
            if name.startswith("ffn"):
                p.zero_()  # 𝓕 = 0 commutes with 𝒜: Lie = unsplit up to rounding
    r = convergence_study("lie", (4, 8, 16), model=model, u0=u0, reference=(u0, 0.0), reference_steps=32)
    assert max(r.splitting_errors) < 1e-13


def test_pre_norm_lie_is_first_order():
    model, u0 = convergence_model(seed=1, norm_position="pre")
    r = convergence_study("lie", N_STEPS, model=model, u0=u0, norm_position="pre", reference_steps=128)
    assert abs(r.order - 1.0) <= 0.15 and r.reference_error < 1e-3 * min(r.errors)


def test_prediction8_attention_dynamics_cluster_tokens():
    r = clustering(seed=0, T=10.0, n_steps=100)
    cos = r.mean_cosine
    assert cos[0] < 0.3 and cos[-1] > 0.999
    assert cos[len(cos) // 4] > cos[0]


def test_prediction11_literal_scheme_is_pushed_to_s2_at_rate_dt():
    r = literal_confinement(seed=0)
    mins = r.min_entry
    assert all(m < 0 for m in mins)  # never exactly in S2 ...
    assert all(abs(b) < abs(a) for a, b in zip(mins[1:], mins[2:]))  # ... but closer as dt shrinks
    assert abs(r.slope - 1) < 0.03  # THEORY: ∝ dt as dt → 0 (fitted at dt = 1/128 … 1/512: 0.99)
    local = r.local_slopes[1:]  # from dt = 1/8 on: pre-asymptotic 0.69, then rising monotonically towards 1
    assert local[0] < 0.8 and all(b > a for a, b in zip(local, local[1:])) and local[-1] > 0.98
    assert abs(mins[-2] / mins[-1]) > 1.95  # the last halving of dt halves the violation


@pytest.mark.parametrize("rule, order", [("left", 1.0), ("midpoint", 2.0)])
def test_prediction13_attention_is_a_consistent_quadrature_in_x(rule, order):
    r = attention_quadrature(seed=0, rule=rule)
    assert abs(r.order - order) <= 0.1
    assert r.errors[-1] < r.errors[0] / 30


def test_prediction13_score_variance_needs_the_inverse_sqrt_width():
    scaled = score_variance(seed=0, n_embd_list=(16, 64, 256))
    raw = score_variance(seed=0, n_embd_list=(16, 64, 256), scaled=False)
    assert 0.7 <= scaled[-1] / scaled[0] <= 1.4  # ≈ constant in N_y with the 1/√N_y factor
    assert 10 <= raw[-1] / raw[0] <= 25  # ∝ N_y (16×) without it
