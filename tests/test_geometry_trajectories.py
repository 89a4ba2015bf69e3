"""Trajectory curvature, depth flow and the per-token sphere residual against closed forms."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mathlens.errors import MathlensError
from mathlens.probes.geometry import depth_flow, sphere_residual, trajectory_curvature


def circle(n_steps, n_points, D=16, radius=2.0, seed=0):
    """n_points equally spaced on a circle (angle 2 pi / n_steps apart) in a random plane of R^D."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(D, 2)))
    t = 2 * np.pi * np.arange(n_points) / n_steps
    return (radius * np.c_[np.cos(t), np.sin(t)]) @ Q.T + 1.0


def test_curvature_of_straight_lines_is_zero():
    rng = np.random.default_rng(0)
    start, direction = rng.normal(size=(3, 1, 32)), rng.normal(size=(3, 1, 32))
    steps = np.cumsum(rng.uniform(0.5, 2.0, size=(3, 12, 1)), axis=1)  # uneven spacing, same line
    H = np.stack([start + steps * direction, 5 * (start + steps * direction)])  # (2, 3, 12, 32)
    r = trajectory_curvature(H)
    assert max(r.mean_curvature) < 1e-7
    assert r.n_angles == 3 * 10 and r.n_undefined == [0, 0]
    assert r.mean_speed[1] == pytest.approx(5 * r.mean_speed[0])


@pytest.mark.parametrize("n_steps", [6, 17, 100])
def test_curvature_on_a_circle_is_the_turning_angle(n_steps):
    x = torch.tensor(circle(n_steps, 20), dtype=torch.float64)
    r = trajectory_curvature([x[None], x[None].flip(1)])  # list of per-layer (batch, tokens, D)
    assert r.mean_curvature == pytest.approx([2 * math.pi / n_steps] * 2, abs=1e-12)
    assert r.per_sequence[0] == pytest.approx([2 * math.pi / n_steps], abs=1e-12)
    assert json.loads(json.dumps(r.to_dict()))["n_angles"] == 18


def test_curvature_skips_zero_steps_and_checks_shapes():
    x = torch.tensor(circle(8, 6))[None]
    x = torch.cat([x[:, :3], x[:, 2:3], x[:, 3:]], dim=1)  # token 3 repeats token 2: a zero step
    r = trajectory_curvature([x])
    assert r.n_undefined == [2]
    assert r.mean_curvature[0] == pytest.approx(2 * math.pi / 8, abs=1e-12)
    for bad in [np.zeros((2, 3, 4)), [np.zeros((1, 2, 4))], [np.zeros((1, 4, 3)), np.zeros((1, 5, 3))], []]:
        with pytest.raises(MathlensError):
            trajectory_curvature(bad)


def test_depth_flow_straight_and_circular_paths():
    # straight: u^n = u^0 + n c w for every token -> steps c|w|, no turning, straightness 1
    rng = np.random.default_rng(1)
    u0, w = rng.normal(size=(2, 5, 8)), rng.normal(size=(2, 5, 8))
    H = np.stack([u0 + 0.3 * n * w for n in range(6)])
    r = depth_flow(H)
    assert r.step_size == pytest.approx([0.3 * np.linalg.norm(w, axis=-1).mean()] * 5)
    assert max(r.turning_angle) < 1e-7 and r.straightness == pytest.approx(1.0)
    assert r.relative_step[0] == pytest.approx((0.3 * np.linalg.norm(w, axis=-1) / np.linalg.norm(u0, axis=-1)).mean())
    # circle: each token walks a regular 12-gon -> turning 2 pi / 12, step = chord
    c = circle(12, 7, radius=1.5)  # (depth 7, D)
    r = depth_flow(torch.tensor(c)[:, None, None, :])
    assert r.turning_angle == pytest.approx([2 * math.pi / 12] * 5, abs=1e-12)
    assert r.step_size == pytest.approx([2 * 1.5 * math.sin(math.pi / 12)] * 6)
    assert r.straightness == pytest.approx(math.sin(6 * math.pi / 12) / (6 * math.sin(math.pi / 12)))
    assert json.loads(json.dumps(r.to_dict()))["n_tokens"] == 1
    with pytest.raises(MathlensError):
        depth_flow(np.zeros((1, 2, 3, 4)))


def test_sphere_residual_zero_for_layernorm_outputs():
    g = torch.Generator().manual_seed(0)
    u = 3 * torch.randn(4, 32, 64, generator=g) + 1.0
    ln = F.layer_norm(u, (64,), eps=0.0)
    r = sphere_residual(ln)
    # float32 LayerNorm: per-token mean and std are exact up to float32 rounding (~1e-7)
    assert r.max_mean_residual < 1e-6 and r.max_std_residual < 1e-6 and r.n_tokens == 128
    # scalar affine sigma2 * z + sigma1 lies on S1(sigma1, sigma2)
    assert sphere_residual(0.5 * ln.double() + 2.0, sigma1=2.0, sigma2=0.5).max_std_residual < 1e-6
    # per-feature affine: a LayerNorm with weight gamma and bias beta
    gamma, beta = torch.rand(64, generator=g) + 0.5, torch.randn(64, generator=g)
    out = F.layer_norm(u, (64,), weight=gamma, bias=beta, eps=0.0)
    assert sphere_residual(out, gamma=gamma, beta=beta).max_std_residual < 1e-5
    assert sphere_residual(out).max_std_residual > 0.05  # not on the scalar sphere
    raw = sphere_residual(u)
    assert raw.mean_std_residual > 1.0 and raw.mean_mean_residual > 0.5
    assert json.loads(json.dumps(raw.to_dict()))["n_features"] == 64
    with pytest.raises(MathlensError):
        sphere_residual(out, gamma=torch.zeros(64))
    with pytest.raises(MathlensError):
        sphere_residual(torch.tensor([1.0, float("nan")]))


def test_sphere_residual_takes_a_layer_norms_parameters_without_warnings():
    import warnings

    from mathlens.probes.trajectories import sphere_residual

    ln = torch.nn.LayerNorm(8, eps=0.0).double()
    with torch.no_grad():
        ln.weight.mul_(2.0)
        ln.bias.add_(0.3)
    u = ln(torch.randn(5, 8, dtype=torch.float64)).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nn.Parameter gamma/beta used to warn about requires_grad
        r = sphere_residual(u, gamma=ln.weight, beta=ln.bias)
    assert r.max_mean_residual < 1e-12 and r.max_std_residual < 1e-12
