"""Limits of the discretisation: small dt (predictions 8, 11) and fine token / feature grids (prediction 13).

- :func:`literal_confinement`: the paper-literal scheme (ReLU on every FFN layer, average residual, per-token
  biases) with T fixed and dt → 0 pushes the state towards S1 ∩ S2: min u^{N_t} → 0⁻ roughly ∝ dt.
- :func:`clustering`: Q = K = V = W^O = I, no FFN, post-LN, small dt: the tokens cluster on the per-token
  sphere (mean pairwise cosine grows towards 1; Geshkovski et al.).
- :func:`attention_quadrature`: attention at a fixed query x* is a normalised Riemann sum over the key
  positions; error against Gauss-Legendre quadrature: order 1 (left points), 2 (midpoints).
- :func:`head_quadrature`: multi-head attention Σ_m Δh·head(h_m) as a Riemann sum over a continuous head variable
  (prediction 12b): order 1 (left points), 2 (midpoints) against Gauss-Legendre in h.
- :func:`score_variance`: variance of the scores q·k at initialisation as N_y grows, with / without 1/√N_y.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from mathlens.errors import MathlensError
from mathlens.flow.config import FlowConfig, check_choice
from mathlens.flow.continuous import ContinuousTransformer
from mathlens.flow.operators import attention_kernel, attention_operator, project_s1
from mathlens.flow.studies import paper_block_config
from mathlens.stats import ols_slope


def _slope(x, y) -> float:
    return float(ols_slope(np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))))


@dataclass
class Confinement:
    """Prediction 11: min entry of u(T) for each dt, and the slope of log|min| on log dt (expect ≈ 1)."""

    dt: list[float]
    min_entry: list[float]
    slope: float | None  # fitted on the dt ≤ fit_dt_max points (None with fewer than two negative minima there)
    local_slopes: list[float | None]  # between consecutive dt (None where a minimum is not negative)
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def literal_confinement(seed: int = 0, n_steps_list=(4, 32, 64, 128, 256, 512, 1024, 2048), T: float = 4.0,
                        n_tokens: int = 6, n_embd: int = 32, fit_dt_max: float = 1 / 128) -> Confinement:
    """The literal scheme with a time-independent θ, σ1 = σ2 = 1, at N_t = T/dt steps.

    The rate is asymptotic (dt → 0), so the slope is fitted where it has settled: on the points with
    dt ≤ ``fit_dt_max`` (N_t = 512 … 2048 at T = 4). The local slopes between consecutive dt show the approach:
    ≈ 0.6–0.8 at dt = 1/8 … 1/16, 0.93–0.97 at 1/64 … 1/128, 0.99 at 1/512 (5 seeds, 6 tokens × 32).
    """
    cfg = paper_block_config(n_embd, 1, n_tokens, relu_on_last=True, ffn_bias_axis="token", residual="average")
    model = ContinuousTransformer(cfg, n_controls=1, T=T, seed=seed, bias_std=0.5).double()
    model.reset_controls(seed, bias_std=0.5, sigma1=1.0, sigma2=1.0)
    gen = torch.Generator().manual_seed(seed + 1)
    u0 = project_s1(torch.randn(1, n_tokens, n_embd, generator=gen, dtype=torch.float64), 1.0, 1.0)
    dts, mins = [], []
    for n in n_steps_list:
        dts.append(T / n)
        mins.append(float(model(u0, int(n)).min()))
    small = [(d, -m) for d, m in zip(dts, mins) if d <= fit_dt_max and m < 0]
    slope = _slope(*zip(*small)) if len(small) >= 2 else None
    local = [_slope((a, b), (-m, -n)) if m < 0 and n < 0 else None
             for a, b, m, n in zip(dts, dts[1:], mins, mins[1:])]
    return Confinement(dt=dts, min_entry=mins, slope=slope, local_slopes=local, seed=seed)


@dataclass
class Clustering:
    """Prediction 8: mean pairwise cosine similarity of the tokens at t = k·dt (k = 0..n_steps)."""

    times: list[float]
    mean_cosine: list[float]
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def mean_pairwise_cosine(u: torch.Tensor) -> float:
    """u: (N_x, N_y), tokens on a sphere around their mean -> mean cosine over pairs i ≠ j of the centred tokens."""
    c = u - u.mean(-1, keepdim=True)
    c = c / c.norm(dim=-1, keepdim=True)
    g = c @ c.T
    n = g.shape[0]
    return float((g.sum() - g.diagonal().sum()) / (n * (n - 1)))


@torch.no_grad()
def clustering(seed: int = 0, n_tokens: int = 8, n_embd: int = 8, beta: float = 1.0, T: float = 20.0,
               n_steps: int = 200) -> Clustering:
    """Lie steps u ← P_{S1(0,1)}(u + dt·Softmax(β⟨u_i, u_j⟩/N_y) u): attention-only sphere dynamics."""
    cfg = FlowConfig(n_embd=n_embd, n_head=1, d_ff=n_embd, activation="tanh", bias=False, causal=False,
                     block_size=n_tokens, attn_scale=beta / n_embd, norm_affine="scalar", norm_eps=0.0,
                     share_norms=True, norm_position="post")
    model = ContinuousTransformer(cfg, n_controls=1, T=T, seed=seed).double()
    eye = torch.eye(n_embd, dtype=torch.float64)
    for name, p in model.controls.items():
        if name.startswith("attn"):
            p[0].copy_(eye)
        elif name.startswith("ffn"):
            p.zero_()
    gen = torch.Generator().manual_seed(seed + 1)
    u0 = project_s1(torch.randn(1, n_tokens, n_embd, generator=gen, dtype=torch.float64))
    states = model(u0, n_steps, return_trajectory=True)
    return Clustering(times=[k * T / n_steps for k in range(n_steps + 1)],
                      mean_cosine=[mean_pairwise_cosine(s[0]) for s in states], seed=seed)


@dataclass
class Quadrature:
    """Prediction 13: error of attention at x* against the continuum operator, per number of key points."""

    rule: str
    n_points: list[int]
    errors: list[float]
    order: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _smooth_field(seed: int, n_embd: int):
    """A smooth non-periodic u(x, ·) on Ω_x = [0, 1]: u(x) = c0 + c1 x + c2 x² + c3 sin(3x) (each c_k ∈ ℝ^{N_y})."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(4, n_embd, generator=gen, dtype=torch.float64)

    def u(x: torch.Tensor) -> torch.Tensor:  # x: (N,) -> (N, N_y)
        basis = torch.stack([torch.ones_like(x), x, x**2, torch.sin(3 * x)], dim=-1)
        return basis @ c

    return u


@torch.no_grad()
def attention_quadrature(seed: int = 0, rule: str = "midpoint", n_points_list=(16, 32, 64, 128, 256, 512, 1024),
                         n_embd: int = 8, x_star: float = 0.37, n_gauss: int = 64) -> Quadrature:
    """Attention output at x* from N_x sampled keys vs ∫ e^{a(x*, x)} V(x) dx / ∫ e^{a(x*, x)} dx."""
    check_choice("rule", rule, ("left", "midpoint"))
    u = _smooth_field(seed, n_embd)
    gen = torch.Generator().manual_seed(seed + 1)
    w_q, w_k, w_v = (torch.randn(n_embd, n_embd, generator=gen, dtype=torch.float64) / math.sqrt(n_embd)
                     for _ in range(3))
    scale = 1.0 / math.sqrt(n_embd)
    q = (u(torch.tensor([x_star], dtype=torch.float64)) @ w_q)[None, None]  # (1, 1, 1, N_y)

    def attend(x: torch.Tensor) -> torch.Tensor:  # discrete attention with keys at x: (N,)
        ux = u(x)
        out, _ = attention_kernel(q, (ux @ w_k)[None, None], (ux @ w_v)[None, None], scale, causal=False)
        return out[0, 0, 0]

    nodes, weights = np.polynomial.legendre.leggauss(n_gauss)
    xg = torch.tensor(0.5 * (nodes + 1), dtype=torch.float64)
    wg = torch.tensor(0.5 * weights, dtype=torch.float64)
    ug = u(xg)
    e = torch.exp(scale * (ug @ w_k) @ q[0, 0, 0])
    exact = (wg * e) @ (ug @ w_v) / (wg * e).sum()
    errors = []
    for n in n_points_list:
        k = torch.arange(n, dtype=torch.float64)
        x = (k + 0.5) / n if rule == "midpoint" else k / n
        errors.append(float((attend(x) - exact).abs().max()))
    return Quadrature(rule=rule, n_points=list(n_points_list), errors=errors,
                      order=-_slope(n_points_list, errors), seed=seed)


@torch.no_grad()
def score_variance(seed: int = 0, n_embd_list=(16, 64, 256), n_tokens: int = 64, scaled: bool = True) -> list[float]:
    """Var of the scores c·q(x)·k(x̃) at init (u ~ N(0,1), W ~ N(0, 1/N_y)); c = 1/√N_y if ``scaled`` else 1."""
    if not n_embd_list:
        raise MathlensError("n_embd_list is empty")
    out = []
    for d in n_embd_list:
        gen = torch.Generator().manual_seed(seed + d)
        u = torch.randn(n_tokens, d, generator=gen, dtype=torch.float64)
        w_q, w_k = (torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d) for _ in range(2))
        scores = (u @ w_q) @ (u @ w_k).T * (1.0 / math.sqrt(d) if scaled else 1.0)
        out.append(float(scores.var()))
    return out


@torch.no_grad()
def head_quadrature(seed: int = 0, rule: str = "midpoint", n_heads_list=(2, 4, 8, 16, 32, 64), n_tokens: int = 5,
                    n_embd: int = 6, n_gauss: int = 48) -> Quadrature:
    """Σ_m Δh Softmax_2(Q(h_m)K(h_m)ᵀ/√N_y) V(h_m) with smooth kernels W(h) = W0 + h W1 + sin(2h) W2 on
    Ω_h = [0, 1] (Δh = 1/N_h, the paper's (41) with L_h = 1) vs the head integral by Gauss-Legendre."""
    check_choice("rule", rule, ("left", "midpoint"))
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(1, n_tokens, n_embd, generator=gen, dtype=torch.float64)
    coef = torch.randn(3, 3, n_embd, n_embd, generator=gen, dtype=torch.float64) / math.sqrt(n_embd)

    def kernels(h: torch.Tensor, weight: torch.Tensor):  # h, weight: (M,) -> w_q, w_k, w_v: (N_y, M·N_y)
        basis = torch.stack([torch.ones_like(h), h, torch.sin(2 * h)], dim=-1)  # (M, 3)
        w = torch.einsum("mb,qbij->qmij", basis, coef)  # (3, M, N_y, N_y)
        w_v = w[2] * weight[:, None, None]  # Δh (or the Gauss weight) folded into the value maps
        return tuple(x.permute(1, 0, 2).reshape(n_embd, -1) for x in (w[0], w[1], w_v))

    def multi_head(h, weight):
        return attention_operator(u, *kernels(h, weight), None, n_heads=len(h), scale=1 / math.sqrt(n_embd))[0]

    nodes, weights = np.polynomial.legendre.leggauss(n_gauss)
    exact = multi_head(torch.tensor(0.5 * (nodes + 1)), torch.tensor(0.5 * weights))
    errors = []
    for n in n_heads_list:
        m = torch.arange(n, dtype=torch.float64)
        h = (m + 0.5) / n if rule == "midpoint" else m / n
        errors.append(float((multi_head(h, torch.full((n,), 1.0 / n, dtype=torch.float64)) - exact).abs().max()))
    return Quadrature(rule=rule, n_points=list(n_heads_list), errors=errors, order=-_slope(n_heads_list, errors),
                      seed=seed)
