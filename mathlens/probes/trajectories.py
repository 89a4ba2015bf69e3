"""Trajectories of token states: curvature along tokens, flow through depth, the per-token sphere.

* Curvature along the sequence (Hosseini & Fedorenko 2023, THEORY.md §11.2 (5)): for the states
  x_1..x_T of one sequence at one layer, v_t = x_{t+1} - x_t and
  c_t = arccos(<v_t, v_{t+1}> / (|v_t| |v_{t+1}|)), t = 1..T-2 (radians).
* Flow through depth (the continuous-time view u^n(x), n = 0..N): steps Delta^n = u^{n+1} - u^n
  per token; step size |Delta^n|, relative step |Delta^n| / |u^n|, turning angle between
  Delta^n and Delta^{n+1}, and straightness |u^N - u^0| / sum_n |Delta^n| (1 for a straight path).
* Per-token sphere S1(sigma1, sigma2) (prediction 9): a LayerNorm output with eps = 0 and scalar
  affine has per-token mean sigma1 and population std sigma2 exactly; with per-feature affine
  (gamma, beta), z = (u - beta) / gamma has mean 0 and std 1.

Angles are computed with Kahan's formula angle(a, b) = 2 atan2(|a' - b'|, |a' + b'|), a' = a/|a|,
b' = b/|b|, which is accurate near 0 and pi, unlike arccos of the cosine. A zero step has no
direction: angles involving it are NaN and left out of the means (``n_undefined`` counts them).
All arithmetic is in float64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from mathlens.errors import MathlensError


def _layers(H, name: str) -> list[torch.Tensor]:
    """H: (layers, batch, tokens, features) array/tensor or list of (batch, tokens, features)."""
    if isinstance(H, (list, tuple)):
        items = list(H)
    else:
        T = H if isinstance(H, torch.Tensor) else torch.as_tensor(np.asarray(H))
        if T.ndim != 4:
            raise MathlensError(f"{name} must have shape (layers, batch, tokens, features), got {tuple(T.shape)}")
        items = list(T.unbind(0))
    if not items:
        raise MathlensError(f"{name} has no layers")
    out = []
    for i, x in enumerate(items):
        x = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if x.ndim != 3:
            raise MathlensError(f"{name}[{i}] must have shape (batch, tokens, features), got {tuple(x.shape)}")
        if x.shape != items[0].shape:
            raise MathlensError(f"{name}[{i}] has shape {tuple(x.shape)}, but {name}[0] has {tuple(items[0].shape)}")
        out.append(x)
    return out


def _f64(x: torch.Tensor, name: str) -> torch.Tensor:
    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise MathlensError(f"{name} contains NaN or infinite values")
    return x


def angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between vectors along the last dim, in [0, pi]; NaN where either is zero.

    a, b: (..., D) -> (...,).
    """
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na, b / nb  # NaN where a norm is 0
    return 2 * torch.atan2((ua - ub).norm(dim=-1), (ua + ub).norm(dim=-1))


def _nanmean(x: torch.Tensor) -> float:
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if bool(ok.any()) else float("nan")


@dataclass
class CurvatureResult:
    """Mean curvature of token trajectories per layer (radians).

    mean_curvature: (layers,) mean of c_t over sequences and t; per_sequence: (layers, batch)
    mean over t; mean_speed: (layers,) mean |v_t|; n_angles per layer; n_undefined: angles
    with a zero step (left out).
    """

    mean_curvature: list
    per_sequence: list
    mean_speed: list
    n_angles: int
    n_undefined: list

    def to_dict(self) -> dict:
        return asdict(self)


def trajectory_curvature(H) -> CurvatureResult:
    """Curvature c_t = angle(v_t, v_{t+1}) of each sequence's path over tokens, per layer.

    H: (layers, batch, tokens, features) or a list of (batch, tokens, features), tokens >= 3.
    """
    layers = _layers(H, "H")
    if layers[0].shape[1] < 3:
        raise MathlensError(f"curvature needs at least 3 tokens per sequence, got {layers[0].shape[1]}")
    mean, per_seq, speed, undefined = [], [], [], []
    for i, x in enumerate(layers):
        x = _f64(x, f"H[{i}]")
        v = x[:, 1:] - x[:, :-1]  # (batch, tokens-1, features)
        c = angle(v[:, :-1], v[:, 1:])  # (batch, tokens-2)
        mean.append(_nanmean(c))
        per_seq.append([_nanmean(row) for row in c])
        speed.append(float(v.norm(dim=-1).mean()))
        undefined.append(int(torch.isnan(c).sum()))
    n_angles = int(layers[0].shape[0] * (layers[0].shape[1] - 2))
    return CurvatureResult(mean, per_seq, speed, n_angles, undefined)


@dataclass
class DepthFlowResult:
    """Velocity and turning of each token's path u^0 -> u^1 -> ... -> u^N through depth.

    step_size: (N,) mean |u^{n+1} - u^n|; relative_step: (N,) mean |u^{n+1} - u^n| / |u^n|;
    turning_angle: (N-1,) mean angle between consecutive steps (radians); straightness: mean
    over tokens of |u^N - u^0| / sum_n |Delta^n|; path_length: mean sum_n |Delta^n|.
    """

    step_size: list
    relative_step: list
    turning_angle: list
    straightness: float
    path_length: float
    n_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def depth_flow(H) -> DepthFlowResult:
    """Velocity and curvature of each token's path through depth.

    H: (depth, batch, tokens, features) states u^0..u^N (e.g. the embedding then every block's
    output) or a list of N+1 (batch, tokens, features) tensors; N >= 1.
    """
    states = _layers(H, "H")
    if len(states) < 2:
        raise MathlensError(f"depth flow needs at least 2 states (u^0, u^1), got {len(states)}")
    step, rel, turn = [], [], []
    length = None
    prev = None
    u = _f64(states[0], "H[0]")
    u0 = u
    for n in range(1, len(states)):
        nxt = _f64(states[n], f"H[{n}]")
        d = nxt - u
        norm_d = d.norm(dim=-1)
        step.append(float(norm_d.mean()))
        r = norm_d / u.norm(dim=-1)
        rel.append(_nanmean(torch.where(torch.isfinite(r), r, torch.nan)))
        if prev is not None:
            turn.append(_nanmean(angle(prev, d)))
        length = norm_d if length is None else length + norm_d
        prev, u = d, nxt
    disp = (u - u0).norm(dim=-1)
    straight = torch.where(length > 0, disp / length, torch.nan)
    return DepthFlowResult(step, rel, turn, _nanmean(straight), float(length.mean()),
                           int(length.numel()))


@dataclass
class SphereResidual:
    """Distance of token states from the per-token sphere: |mean - sigma1| and |std - sigma2|.

    With per-feature affine, of z = (u - beta) / gamma from mean 0 and std 1. ``std`` is the
    population standard deviation over features.
    """

    max_mean_residual: float
    mean_mean_residual: float
    max_std_residual: float
    mean_std_residual: float
    n_tokens: int
    n_features: int

    def to_dict(self) -> dict:
        return asdict(self)


def sphere_residual(u, sigma1: float = 0.0, sigma2: float = 1.0, *, gamma=None, beta=None) -> SphereResidual:
    """Residual of states to the per-token sphere S1(sigma1, sigma2) (prediction 9).

    u: (..., features). Scalar affine: compares each token's mean with ``sigma1`` and population
    std with ``sigma2``. Per-feature affine: pass ``gamma``, ``beta`` (features,) (e.g. a
    LayerNorm's weight and bias); then z = (u - beta) / gamma is compared with mean 0, std 1.
    """
    x = u.detach() if isinstance(u, torch.Tensor) else torch.as_tensor(np.asarray(u))
    if x.ndim < 1 or x.shape[-1] < 2:
        raise MathlensError(f"u must have shape (..., features) with features >= 2, got {tuple(x.shape)}")
    x = _f64(x, "u").reshape(-1, x.shape[-1])
    D = x.shape[-1]
    if gamma is not None or beta is not None:
        g = torch.ones(D, dtype=torch.float64) if gamma is None else _f64(torch.as_tensor(gamma).detach(), "gamma")
        b = torch.zeros(D, dtype=torch.float64) if beta is None else _f64(torch.as_tensor(beta).detach(), "beta")
        g, b = g.to(x.device).expand(D), b.to(x.device).expand(D)
        if bool((g == 0).any()):
            raise MathlensError("gamma has a zero entry: (u - beta) / gamma is undefined")
        x = (x - b) / g
        sigma1, sigma2 = 0.0, 1.0
    mean = x.mean(dim=-1)
    std = x.std(dim=-1, unbiased=False)
    rm, rs = (mean - sigma1).abs(), (std - sigma2).abs()
    return SphereResidual(float(rm.max()), float(rm.mean()), float(rs.max()), float(rs.mean()),
                          int(x.shape[0]), int(D))
