"""Predictions 2 and 3: LayerNorm = projection onto S1(σ1, σ2), ReLU = projection onto S2 (THEORY §3.1-§3.2)."""

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from mathlens.flow import project_s1, project_s1_distance, project_s2
from mathlens.flow.manifold import tangent_project

S1_, S2_ = 0.3, 1.7  # σ1, σ2


def _random_s1(n: int, d: int, gen) -> torch.Tensor:
    return project_s1(torch.randn(n, d, generator=gen, dtype=torch.float64), S1_, S2_)


def test_prediction2a_moments_and_2b_distance_closed_form():
    gen = torch.Generator().manual_seed(0)
    v = 2.0 * torch.randn(5, 7, 16, generator=gen, dtype=torch.float64) + 0.7
    u = project_s1(v, S1_, S2_)
    assert (u.mean(-1) - S1_).abs().max() < 1e-13
    assert (u.var(-1, unbiased=False) - S2_**2).abs().max() < 1e-12
    alpha, beta = v.mean(-1), v.var(-1, unbiased=False)
    closed = 16 * ((S2_ - beta.sqrt()) ** 2 + (S1_ - alpha) ** 2)
    assert ((u - v).pow(2).sum(-1) - closed).abs().max() < 1e-11
    assert (project_s1_distance(v, S1_, S2_) - closed).abs().max() < 1e-11


def test_prediction2c_no_point_of_s1_is_closer_and_antipode_is_farthest():
    gen = torch.Generator().manual_seed(1)
    d = 16
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    best = float(project_s1_distance(v, S1_, S2_))
    samples = _random_s1(50_000, d, gen)
    dist = (samples - v).pow(2).sum(-1)
    assert float(dist.min()) >= best - 1e-12
    alpha, beta = v.mean(), v.var(unbiased=False)
    antipode = S1_ - S2_ * (v - alpha) / beta.sqrt()
    far = float((antipode - v).pow(2).sum())
    assert far == pytest.approx(d * float((S2_ + beta.sqrt()) ** 2 + (S1_ - alpha) ** 2), rel=1e-12)
    assert float(dist.max()) <= far + 1e-12


def test_prediction2c_riemannian_gradient_descent_converges_to_layer_norm():
    gen = torch.Generator().manual_seed(2)
    d = 12
    v = torch.randn(d, generator=gen, dtype=torch.float64)
    target = project_s1(v, S1_, S2_)
    u = _random_s1(20, d, gen)  # 20 random starts
    for _ in range(400):  # grad of ½‖u − v‖² on S1, then retraction by the projection
        u = project_s1(u - 0.2 * tangent_project(u - v, u), S1_, S2_)
    assert (u - target).abs().max() < 1e-8
    # the antipodal point is also stationary (Riemannian gradient 0), i.e. the second root of App. B
    antipode = S1_ - S2_ * (v - v.mean()) / v.var(unbiased=False).sqrt()
    assert tangent_project(antipode - v, antipode).abs().max() < 1e-12
    assert tangent_project(target - v, target).abs().max() < 1e-12


def test_prediction2d_constant_token_all_of_s1_equidistant():
    gen = torch.Generator().manual_seed(3)
    d, c = 10, 0.8
    v = torch.full((d,), c, dtype=torch.float64)
    dist = (_random_s1(1000, d, gen) - v).pow(2).sum(-1)
    assert (dist - d * (S2_**2 + (S1_ - c) ** 2)).abs().max() < 1e-11


def test_prediction3_relu_is_the_projection_onto_the_nonnegative_cone():
    rng = np.random.default_rng(4)
    v = rng.normal(size=40)
    # generic bounded least squares (no ReLU inside): argmin_{w ≥ 0} ‖I w − v‖²
    w = lsq_linear(np.eye(40), v, bounds=(0.0, np.inf), method="bvls", tol=1e-14).x
    relu = project_s2(torch.tensor(v)).numpy()
    assert np.max(np.abs(w - relu)) < 1e-10
    # brute force on a grid, coordinate by coordinate (the problem separates)
    grid = np.linspace(0.0, 4.0, 40_001)
    brute = grid[np.argmin((grid[None, :] - v[:, None]) ** 2, axis=1)]
    assert np.max(np.abs(brute - relu)) <= 1e-4
