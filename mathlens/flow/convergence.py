"""Order of accuracy in depth (THEORY §3.3, §13, predictions 6 and 7).

A fixed smooth control θ(t) (linear in t between two random control points, tanh FFN, no S2 constraint,
scalar LayerNorm with eps = 0) is run with N_t = T/dt steps of each scheme and compared at t = T with a
reference: RK4 on the tangent-projected ODE u_t = Π_{T_u S1}(𝒜(u) + 𝓕(u)) with many steps (post-norm) or on
u_t = 𝒜(Pu) + 𝓕(Pu) (pre-norm). The fitted log-log slope of error against dt is the order:
Lie ≈ 1, unsplit Euler-projection ≈ 1, Strang with Euler substeps ≈ 1, Strang with tangent-projected Heun
substeps ≈ 2. The splitting error ‖u_split − u_unsplit‖ is reported alongside.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from mathlens.errors import MathlensError
from mathlens.flow.config import FlowConfig, check_choice
from mathlens.flow.continuous import CT_SCHEMES, ContinuousTransformer, default_sample_at
from mathlens.flow.manifold import rk4_step
from mathlens.flow.operators import project_s1
from mathlens.stats import ols_slope, slope_ci


def _retract(u: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Back onto the sphere with the given per-token mean and standard deviation (u: (..., N_y))."""
    c = u - u.mean(-1, keepdim=True)
    return mean + std * c / c.pow(2).mean(-1, keepdim=True).sqrt()


@torch.no_grad()
def reference_solution(model: ContinuousTransformer, u0: Tensor, n_steps: int = 4096,
                       norm_position: str | None = None) -> Tensor:
    """RK4 with ``n_steps`` steps on [0, T] of the model's ODE; u0: (B, N_x, N_y) -> u(T).

    Post-norm: u0 must lie on S1 and σ1, σ2 must be constant in t; each RK4 step is followed by the
    retraction to the initial per-token mean and variance (it moves the state by O(dt⁵) only).
    """
    norm_position = norm_position or model.cfg.norm_position
    for name, p in model.controls.items():  # the retraction below keeps the initial mean and std
        if name.endswith(("sigma1", "sigma2")) and not bool((p == p[0]).all()):
            raise MathlensError(f"reference_solution needs constant σ1, σ2 in t; control {name!r} varies")
    dt = model.T / n_steps
    u = u0
    mean, std = u0.mean(-1, keepdim=True), (u0 - u0.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True).sqrt()

    def rhs(v, t):
        return model.vector_field(v, t, norm_position)

    with model.cached_controls():
        for n in range(n_steps):
            u = rk4_step(rhs, u, n * dt, dt)
            if norm_position == "post":
                u = _retract(u, mean, std)
    return u


def convergence_model(seed: int = 0, n_tokens: int = 6, n_embd: int = 12, n_head: int = 2, T: float = 1.0,
                      time_dependent: bool = True, causal: bool = False,
                      norm_position: str = "post") -> tuple[ContinuousTransformer, Tensor]:
    """The smooth test problem: (model in float64, u0 on S1(0, 1) of shape (1, n_tokens, n_embd))."""
    cfg = FlowConfig(n_embd=n_embd, n_head=n_head, d_ff=2 * n_embd, activation="tanh", bias=True, causal=causal,
                     block_size=n_tokens, norm_affine="scalar", norm_eps=0.0, share_norms=True,
                     norm_position=norm_position)
    model = ContinuousTransformer(cfg, n_controls=2, T=T, interpolation="linear", seed=seed, bias_std=0.5)
    model.double()
    if not time_dependent:
        with torch.no_grad():
            for p in model.controls.values():
                p[1].copy_(p[0])
    gen = torch.Generator().manual_seed(seed + 10_000)
    u0 = project_s1(torch.randn(1, n_tokens, n_embd, generator=gen, dtype=torch.float64))
    return model, u0


@dataclass
class ConvergenceResult:
    """Errors at t = T against the reference, the fitted order (slope of log error on log dt) and its CI."""

    scheme: str
    norm_position: str
    n_steps: list[int]
    dt: list[float]
    errors: list[float]
    order: float
    order_ci: list[float]
    unsplit_errors: list[float]
    splitting_errors: list[float]
    splitting_order: float | None  # None when split = unsplit (scheme "parallel")
    reference_steps: int
    reference_error: float  # |RK4(n) − RK4(n/2)|/15: Richardson estimate of the reference's own error
    seed: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _fit(dt, errors) -> float:
    x, y = np.log(np.asarray(dt)), np.log(np.maximum(np.asarray(errors), 1e-300))
    return float(ols_slope(x, y))


@torch.no_grad()
def convergence_study(scheme: str = "lie", n_steps_list=(8, 16, 32, 64), seed: int = 0,
                      reference_steps: int = 128, norm_position: str = "post", sample_at: str | None = None,
                      time_dependent: bool = True, n_tokens: int = 6, n_embd: int = 12, T: float = 1.0,
                      model: ContinuousTransformer | None = None, u0: Tensor | None = None,
                      reference: tuple[Tensor, float] | None = None,
                      unsplit: dict[int, Tensor] | None = None) -> ConvergenceResult:
    """Measured order of ``scheme`` in depth. ``sample_at`` defaults to "midpoint" for the Heun variants (θ frozen
    at t^{n−1/2}: second order for smooth θ(t)) and to the paper's "left" (θ^n = θ(t^{n−1})) otherwise.

    Defaults (N_t = 8…64, RK4 reference with 128 steps, Richardson error ~1e-9 ≪ the smallest error ~1e-4)
    take about a second per scheme on one CPU core.

    ``model``/``u0`` replace the default test problem; ``reference`` = (u_ref, its error) reuses a reference and
    ``unsplit`` = {N_t: u(T) of the unsplit Euler-projection scheme} reuses those runs.
    """
    check_choice("scheme", scheme, CT_SCHEMES)
    n_steps_list = [int(n) for n in n_steps_list]
    if len(n_steps_list) < 3 or min(n_steps_list) < 1:
        raise MathlensError(f"n_steps_list = {n_steps_list} needs at least 3 positive step counts")
    if reference_steps < 2 * max(n_steps_list):
        raise MathlensError(f"reference_steps = {reference_steps} must be at least twice max(n_steps_list)")
    if model is None:
        model, u0 = convergence_model(seed, n_tokens, n_embd, T=T, time_dependent=time_dependent,
                                      norm_position=norm_position)
    sample_at = sample_at or default_sample_at(scheme)
    if reference is None:
        reference = reference_with_error(model, u0, reference_steps, norm_position)
    u_ref, ref_err = reference
    errors, unsplit_errors, splitting = [], [], []
    for n in n_steps_list:
        u = model(u0, n, scheme, norm_position, sample_at)
        if scheme == "parallel":
            v = u
        elif unsplit is not None and n in unsplit:
            v = unsplit[n]
        else:
            v = model(u0, n, "parallel", norm_position, sample_at)
        errors.append(float((u - u_ref).abs().max()))
        unsplit_errors.append(float((v - u_ref).abs().max()))
        splitting.append(float((u - v).abs().max()))
    dts = [model.T / n for n in n_steps_list]
    ci = slope_ci(dts, errors, n_boot=500, seed=seed, log=True)
    return ConvergenceResult(
        scheme=scheme, norm_position=norm_position, n_steps=n_steps_list, dt=dts, errors=errors,
        order=_fit(dts, errors), order_ci=[ci.low, ci.high], unsplit_errors=unsplit_errors, splitting_errors=splitting,
        splitting_order=_fit(dts, splitting) if min(splitting) > 0 else None,
        reference_steps=reference_steps, reference_error=ref_err, seed=seed,
        settings={"sample_at": sample_at, "time_dependent": time_dependent, "n_tokens": int(u0.shape[1]),
                  "n_embd": int(u0.shape[2]), "T": model.T, "error_norm": "max abs"})


def reference_with_error(model: ContinuousTransformer, u0: Tensor, n_steps: int,
                         norm_position: str | None = None) -> tuple[Tensor, float]:
    """(RK4 solution with n_steps, Richardson estimate of its error |u_n − u_{n/2}|/15 in max abs)."""
    fine = reference_solution(model, u0, n_steps, norm_position)
    coarse = reference_solution(model, u0, n_steps // 2, norm_position)
    return fine, float((fine - coarse).abs().max()) / 15.0


def convergence_studies(schemes=("lie", "parallel", "strang", "strang_heun"), seed: int = 0,
                        n_steps_list=(8, 16, 32, 64), reference_steps: int = 128, norm_position: str = "post",
                        **problem) -> dict[str, ConvergenceResult]:
    """:func:`convergence_study` of several schemes on one test problem, sharing its reference solution.

    ``problem``: keyword arguments of :func:`convergence_model` (n_tokens, n_embd, n_head, T, time_dependent)."""
    model, u0 = convergence_model(seed, norm_position=norm_position, **problem)
    reference = reference_with_error(model, u0, reference_steps, norm_position)
    with torch.no_grad():
        unsplit = {int(n): model(u0, int(n), "parallel", norm_position) for n in n_steps_list}
    out = {}
    for s in schemes:
        shared = unsplit if not s.startswith("strang_heun") else None  # these sample θ at midpoints
        out[s] = convergence_study(s, n_steps_list, seed, reference_steps, norm_position, model=model, u0=u0,
                                   reference=reference, unsplit=shared)
    return out
