"""Calculus on the constraint manifold S1 and the one-step ODE solvers of the convergence studies.

S1(σ1, σ2) is, per token, a sphere of radius σ2·√N_y in the hyperplane {mean_y = σ1} (THEORY §2.1).
Its tangent space at u is {g : mean_y g = 0, ⟨g, u − σ1⟩ = 0}; the normal space is span{1, u − σ1}.

- :func:`tangent_project`: Π_{T_u S1}(g), the orthogonal projection onto the tangent space.
- :func:`euler_step`, :func:`heun_step`, :func:`rk4_step`: explicit one-step solvers of u_t = field(u, t).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

Field = Callable[[Tensor, float], Tensor]


def tangent_project(g: Tensor, u: Tensor) -> Tensor:
    """Π_{T_u S1}(g) = g_c − ⟨g_c, u_c⟩/⟨u_c, u_c⟩ · u_c, token by token.

    g, u: (..., N_y) -> (..., N_y). g_c = g − mean_y(g), u_c = u − mean_y(u); on S1 u_c = u − σ1, so this is
    the formula g − mean(g) − ⟨g − mean, u − σ1⟩/⟨u − σ1, u − σ1⟩ (u − σ1) of THEORY §9, extended smoothly
    off S1 (needed by the intermediate stages of Heun / RK4, which leave the manifold by O(dt²)).
    """
    g_c = g - g.mean(-1, keepdim=True)
    u_c = u - u.mean(-1, keepdim=True)
    coef = (g_c * u_c).sum(-1, keepdim=True) / (u_c * u_c).sum(-1, keepdim=True)
    return g_c - coef * u_c


def euler_step(field: Field, u: Tensor, t: float, dt: float) -> Tensor:
    """Explicit Euler: u + dt·field(u, t). First order."""
    return u + dt * field(u, t)


def heun_step(field: Field, u: Tensor, t: float, dt: float) -> Tensor:
    """Heun (explicit trapezoid): second order."""
    k1 = field(u, t)
    k2 = field(u + dt * k1, t + dt)
    return u + 0.5 * dt * (k1 + k2)


def rk4_step(field: Field, u: Tensor, t: float, dt: float) -> Tensor:
    """Classical Runge-Kutta: fourth order."""
    k1 = field(u, t)
    k2 = field(u + 0.5 * dt * k1, t + 0.5 * dt)
    k3 = field(u + 0.5 * dt * k2, t + 0.5 * dt)
    k4 = field(u + dt * k3, t + dt)
    return u + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
