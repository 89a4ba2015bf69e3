"""Scaling-law fits with bootstrap confidence intervals.

* Chinchilla form (Hoffmann et al. 2022, approach 3, as re-done by Epoch AI, Besiroglu et al. 2024):
  ``L(N, D) = E + A / N^α + B / D^β``. With a = log A, b = log B, e = log E the model is
  ``log L̂ = LSE(a − α log N, b − β log D, e)`` and the fit minimises
  ``Σ_i Huber_δ(log L̂_i − log L_i)`` with L-BFGS from a grid of starting points
  (Hoffmann's grid: α, β ∈ {0, 0.5, …, 2}, e ∈ {−1, −0.5, …, 1}, a, b ∈ {0, 5, …, 25}).
* Kaplan et al. 2020 form ``L(N, D) = [(N_c/N)^{α_N/α_D} + D_c/D]^{α_D}``, fitted the same way in
  log space: ``log L̂ = α_D · LSE(p (log N_c − log N), log D_c − log D)`` with p = α_N / α_D.
* One-variable power laws ``L(x) = E + A x^{−α}`` (same machinery, one term) and ``L(x) = A x^{−α}``
  (OLS of log L on log x).

Bootstrap CIs resample the points with replacement and refit from the full-sample optimum.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from mathlens.errors import MathlensError
from mathlens.stats import CI, ci_from_bootstrap, ols_slope

__all__ = [
    "ChinchillaFit", "KaplanFit", "PowerLawFit", "fit_chinchilla", "fit_kaplan", "fit_power_law",
    "hoffmann_grid", "load_chinchilla_csv", "plot_scaling",
]

_LBFGS = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}


def _positive(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=float).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise MathlensError(f"{name} must be a non-empty array of positive finite numbers")
    return x


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals r and its derivative ψ(r) = clip(r, −δ, δ)."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)), np.clip(r, -delta, delta)


def _lse(u: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """log Σ exp(u) along ``axis`` and the softmax weights (max-shifted, plain NumPy: fast)."""
    m = u.max(axis=axis, keepdims=True)
    z = np.exp(u - m)
    s = z.sum(axis=axis, keepdims=True)
    return (np.log(s) + m).squeeze(axis), z / s


# ---- sum of power terms plus a constant, in log space ---------------------------------------------
# theta = (a_1..a_K, α_1..α_K, e); log L̂ = LSE(a_k − α_k log x_k, e); K = 2 for Chinchilla.

def _lse_objective(theta: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float):
    """Σ Huber_δ(log L̂ − log y) and its gradient. logx: (n, K), logy: (n,)."""
    K = logx.shape[1]
    a, al, e = theta[:K], theta[K:2 * K], theta[2 * K]
    u = np.concatenate([a - al * logx, np.full((logx.shape[0], 1), e)], axis=1)  # (n, K+1)
    pred, w = _lse(u, axis=1)
    loss, psi = _huber(pred - logy, delta)
    w = w * psi[:, None]
    grad = np.concatenate([w[:, :K].sum(0), -(w[:, :K] * logx).sum(0), [w[:, K].sum()]])
    return float(loss.sum()), grad


def _lse_objective_many(thetas: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float):
    """Objective for many starts at once. thetas: (S, 2K+1) -> (S,)."""
    K = logx.shape[1]
    a, al, e = thetas[:, None, :K], thetas[:, None, K:2 * K], thetas[:, None, 2 * K:]
    u = np.concatenate([a - al * logx[None], np.broadcast_to(e, (len(thetas), logx.shape[0], 1))], axis=2)
    return _huber(_lse(u, axis=2)[0] - logy[None], delta)[0].sum(1)


def _one_blas_thread():
    """L-BFGS-B calls BLAS on 5-vectors; a multi-threaded OpenBLAS makes that ~30x slower on a busy
    machine, so limit BLAS to one thread while fitting (threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _minimise(fun, x0, args):
    res = minimize(fun, x0, args=args, jac=True, method="L-BFGS-B", options=_LBFGS)
    return res.x, float(res.fun)


def _best_fit(fun, starts: np.ndarray, args, screen, n_starts: int | None):
    """L-BFGS from the ``n_starts`` grid points with the lowest objective (all when None)."""
    if n_starts is not None and n_starts < len(starts):
        starts = starts[np.argsort(screen(starts, *args), kind="stable")[:n_starts]]
    best = (None, math.inf)
    with _one_blas_thread():
        for x0 in starts:
            x, f = _minimise(fun, x0, args)
            if f < best[1]:
                best = (x, f)
    return best


def _bootstrap(fun, theta, args_of, n: int, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(theta)))
    with _one_blas_thread():
        for i in range(n_boot):
            out[i] = _minimise(fun, theta, args_of(rng.integers(0, n, size=n)))[0]
    return out


def hoffmann_grid(step: int = 1) -> np.ndarray:
    """Hoffmann et al.'s grid of starts as rows (a, b, α, β, e): 6·6·5·5·5 = 4500 (``step`` thins it)."""
    ab = np.arange(0.0, 25.1, 5.0)[::step]
    exps = np.arange(0.0, 2.01, 0.5)[::step]
    es = np.arange(-1.0, 1.01, 0.5)[::step]
    g = np.meshgrid(ab, ab, exps, exps, es, indexing="ij")
    return np.stack([x.reshape(-1) for x in g], axis=1)


# ---- Chinchilla -------------------------------------------------------------------------------------

@dataclass
class ChinchillaFit:
    """L(N, D) = E + A/N^alpha + B/D^beta; ``ci``: name -> 95 % bootstrap :class:`CI`."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    delta: float
    n_boot: int
    ci: dict[str, CI] = field(default_factory=dict)

    def predict(self, N, D):
        """N, D: arrays (broadcast) -> predicted loss."""
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def compute_optimal(self, C):
        """Loss-minimising (N_opt, D_opt) under C = 6 N D FLOP:
        N_opt = G (C/6)^{β/(α+β)}, D_opt = G^{-1} (C/6)^{α/(α+β)}, G = (αA/(βB))^{1/(α+β)}."""
        C = np.asarray(C, dtype=float)
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        return G * (C / 6) ** (self.beta / s), (C / 6) ** (self.alpha / s) / G

    def __getattr__(self, name):  # E_ci, A_ci, ... -> self.ci[...]
        if name.endswith("_ci") and name[:-3] in ("E", "A", "B", "alpha", "beta"):
            return self.__dict__["ci"].get(name[:-3])
        raise AttributeError(name)

    def to_dict(self) -> dict:
        d = {k: float(getattr(self, k)) for k in ("E", "A", "B", "alpha", "beta", "objective", "delta")}
        d.update(form="E + A/N^alpha + B/D^beta", n_points=self.n_points, n_boot=self.n_boot,
                 ci={k: v.to_dict() for k, v in self.ci.items()})
        return d


def fit_chinchilla(N, D, loss, seed: int = 0, delta: float = 1e-3, n_boot: int = 200, alpha: float = 0.05,
                   grid: np.ndarray | None = None, n_starts: int | None = 32) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^α + B/D^β (Huber-δ on log residuals, L-BFGS from a grid).

    N, D, loss: (n,) positive. ``grid``: (S, 5) starts (a, b, α, β, e), default :func:`hoffmann_grid`;
    L-BFGS runs from the ``n_starts`` starts with the lowest initial objective (None: from all).
    ``n_boot`` bootstrap refits (from the optimum) give percentile CIs at level 1 − alpha.
    """
    N, D, L = _positive(N, "N"), _positive(D, "D"), _positive(loss, "loss")
    if not N.size == D.size == L.size:
        raise MathlensError(f"N, D and loss must have equal length, got {N.size}, {D.size}, {L.size}")
    if N.size < 6:
        raise MathlensError(f"a Chinchilla fit needs at least 6 points, got {N.size}")
    if delta <= 0:
        raise MathlensError(f"Huber delta must be positive, got {delta}")
    logx, logy = np.stack([np.log(N), np.log(D)], axis=1), np.log(L)
    starts = hoffmann_grid() if grid is None else np.asarray(grid, dtype=float)
    # grid rows are (a, b, α, β, e) = our theta layout (a_1, a_2, α_1, α_2, e)
    theta, f = _best_fit(_lse_objective, starts, (logx, logy, delta), _lse_objective_many, n_starts)
    boots = _bootstrap(_lse_objective, theta, lambda i: (logx[i], logy[i], delta), N.size, n_boot, seed)

    def params(t):
        return {"E": np.exp(t[..., 4]), "A": np.exp(t[..., 0]), "B": np.exp(t[..., 1]),
                "alpha": t[..., 2], "beta": t[..., 3]}

    est, bp = params(theta), params(boots)
    ci = {k: ci_from_bootstrap(bp[k], est[k], N.size, alpha) for k in est} if n_boot else {}
    return ChinchillaFit(**{k: float(v) for k, v in est.items()}, objective=f, n_points=int(N.size),
                         delta=delta, n_boot=n_boot, ci=ci)


def load_chinchilla_csv(path, drop_highest: int = 5):
    """(N, D, loss) from Epoch's Chinchilla Figure-4 CSV (columns 'Model Size', 'Training FLOP', 'loss'),
    with D = FLOP / (6 N), dropping the ``drop_highest`` highest-loss points (Epoch's procedure)."""
    import csv

    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        N = np.array([float(r["Model Size"]) for r in rows])
        C = np.array([float(r["Training FLOP"]) for r in rows])
        L = np.array([float(r["loss"]) for r in rows])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise MathlensError(f"cannot read Chinchilla points from {path}: {exc}") from None
    keep = np.argsort(L, kind="stable")[: max(0, L.size - drop_highest)]
    keep.sort()
    return N[keep], C[keep] / (6 * N[keep]), L[keep]


# ---- Kaplan -----------------------------------------------------------------------------------------

def _kaplan_objective(theta, lN, lD, logy, delta):
    """theta = (log N_c, log D_c, p = α_N/α_D, α_D); log L̂ = α_D · LSE(p (log N_c − lN), log D_c − lD)."""
    lnc, ldc, p, ad = theta
    u = np.stack([p * (lnc - lN), ldc - lD], axis=1)
    s, w = _lse(u, axis=1)
    loss, psi = _huber(ad * s - logy, delta)
    grad = np.array([np.sum(psi * ad * w[:, 0] * p), np.sum(psi * ad * w[:, 1]),
                     np.sum(psi * ad * w[:, 0] * (lnc - lN)), np.sum(psi * s)])
    return float(loss.sum()), grad


def _kaplan_many(thetas, lN, lD, logy, delta):
    lnc, ldc, p, ad = (thetas[:, i:i + 1] for i in range(4))
    s = _lse(np.stack([p * (lnc - lN), ldc - lD], axis=2), axis=2)[0]
    return _huber(ad * s - logy, delta)[0].sum(1)


@dataclass
class KaplanFit:
    """L(N, D) = [(N_c/N)^{alpha_N/alpha_D} + D_c/D]^{alpha_D}; ``ci``: name -> :class:`CI`."""

    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float
    objective: float
    n_points: int
    ci: dict[str, CI] = field(default_factory=dict)

    def predict(self, N, D):
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return ((self.N_c / N) ** (self.alpha_N / self.alpha_D) + self.D_c / D) ** self.alpha_D

    def to_dict(self) -> dict:
        d = {k: float(getattr(self, k)) for k in ("N_c", "D_c", "alpha_N", "alpha_D", "objective")}
        d.update(form="[(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D", n_points=self.n_points,
                 ci={k: v.to_dict() for k, v in self.ci.items()})
        return d


def fit_kaplan(N, D, loss, seed: int = 0, delta: float = 1e-3, n_boot: int = 200,
               alpha: float = 0.05) -> KaplanFit:
    """Fit the Kaplan et al. 2020 L(N, D) (Huber-δ on log residuals, L-BFGS from a grid of starts whose
    log N_c, log D_c are placed 0–20 nats above the data's mean log N, log D). N, D, loss: (n,)."""
    N, D, L = _positive(N, "N"), _positive(D, "D"), _positive(loss, "loss")
    if not N.size == D.size == L.size or N.size < 5:
        raise MathlensError("Kaplan fit needs N, D, loss of equal length >= 5")
    lN, lD, logy = np.log(N), np.log(D), np.log(L)
    offs = np.array([0.0, 5.0, 10.0, 15.0, 20.0])
    g = np.meshgrid(lN.mean() + offs, lD.mean() + offs, [0.5, 1.0, 2.0], [0.05, 0.1, 0.2, 0.4], indexing="ij")
    starts = np.stack([x.reshape(-1) for x in g], axis=1)
    theta, f = _best_fit(_kaplan_objective, starts, (lN, lD, logy, delta), _kaplan_many, 16)
    boots = _bootstrap(_kaplan_objective, theta, lambda i: (lN[i], lD[i], logy[i], delta), N.size, n_boot, seed)

    def params(t):
        return {"N_c": np.exp(t[..., 0]), "D_c": np.exp(t[..., 1]), "alpha_N": t[..., 2] * t[..., 3],
                "alpha_D": t[..., 3]}

    est, bp = params(theta), params(boots)
    ci = {k: ci_from_bootstrap(bp[k], est[k], N.size, alpha) for k in est} if n_boot else {}
    return KaplanFit(**{k: float(v) for k, v in est.items()}, objective=f, n_points=int(N.size), ci=ci)


# ---- one-variable power laws -----------------------------------------------------------------------

@dataclass
class PowerLawFit:
    """L(x) = E + A x^{-alpha} (``with_E``) or A x^{-alpha}; ``ci``: name -> :class:`CI`."""

    E: float
    A: float
    alpha: float
    with_E: bool
    objective: float
    n_points: int
    ci: dict[str, CI] = field(default_factory=dict)

    def predict(self, x):
        return self.E + self.A * np.asarray(x, dtype=float) ** (-self.alpha)

    def to_dict(self) -> dict:
        d = {k: float(getattr(self, k)) for k in ("E", "A", "alpha", "objective")}
        d.update(form="E + A x^-alpha" if self.with_E else "A x^-alpha", n_points=self.n_points,
                 ci={k: v.to_dict() for k, v in self.ci.items()})
        return d


def fit_power_law(x, y, with_E: bool = True, seed: int = 0, delta: float = 1e-3, n_boot: int = 200,
                  alpha: float = 0.05) -> PowerLawFit:
    """Fit y = E + A x^{-α} (Huber-δ on log residuals, L-BFGS from a grid) or, with ``with_E=False``,
    y = A x^{-α} by OLS of log y on log x. x, y: (n,) positive."""
    x, y = _positive(x, "x"), _positive(y, "y")
    if x.size != y.size or x.size < 3 + with_E or np.ptp(x) == 0:
        raise MathlensError("power-law fit needs x, y of equal length >= 4 with distinct x values")
    lx, ly = np.log(x), np.log(y)
    rng = np.random.default_rng(seed)
    if not with_E:
        def ols(i):
            s = ols_slope(lx[i], ly[i])
            return np.stack([np.mean(ly[i] - s[..., None] * lx[i], axis=-1), -s], axis=-1)  # (log A, α)

        theta = ols(np.arange(x.size))
        boots = ols(rng.integers(0, x.size, size=(n_boot, x.size))) if n_boot else np.zeros((0, 2))
        boots = boots[np.all(np.isfinite(boots), axis=1)]
        f = float(np.sum((theta[0] - theta[1] * lx - ly) ** 2))
        est = {"E": 0.0, "A": np.exp(theta[0]), "alpha": theta[1]}
        bp = {"A": np.exp(boots[:, 0]), "alpha": boots[:, 1]}
    else:
        g = np.meshgrid(ly.max() + np.arange(-2.0, 12.1, 2.0), np.arange(0.0, 2.01, 0.25),
                        ly.min() + np.array([-3.0, -1.0, -0.3, -0.1, -0.03]), indexing="ij")
        starts = np.stack([v.reshape(-1) for v in g], axis=1)
        args = (lx[:, None], ly, delta)
        theta, f = _best_fit(_lse_objective, starts, args, _lse_objective_many, 32)
        boots = _bootstrap(_lse_objective, theta, lambda i: (lx[i, None], ly[i], delta), x.size, n_boot, seed)
        est = {"E": np.exp(theta[2]), "A": np.exp(theta[0]), "alpha": theta[1]}
        bp = {"E": np.exp(boots[:, 2]), "A": np.exp(boots[:, 0]), "alpha": boots[:, 1]}
    ci = {k: ci_from_bootstrap(bp[k], est[k], x.size, alpha) for k in bp} if n_boot else {}
    return PowerLawFit(E=float(est["E"]), A=float(est["A"]), alpha=float(est["alpha"]), with_E=with_E,
                       objective=f, n_points=int(x.size), ci=ci)


# ---- plots ------------------------------------------------------------------------------------------

def plot_scaling(fit, x, loss, D=None, ax=None):
    """Data and fitted curves; returns the matplotlib Figure (the caller saves it).

    PowerLawFit: loss vs x (log-log) with the fitted curve. ChinchillaFit / KaplanFit (``x`` = N, ``D``
    given): loss vs N coloured by compute C = 6ND, with the fitted iso-FLOP curves at the quartiles of C.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 4))
    if isinstance(fit, PowerLawFit):
        grid = np.geomspace(x.min(), x.max(), 200)
        ax.scatter(x, loss, s=12, label="data")
        ax.plot(grid, fit.predict(grid), "k-", label=f"fit: α = {fit.alpha:.3g}")
        ax.set_xlabel("x")
    else:
        if D is None:
            raise MathlensError("plot_scaling needs D for a two-variable fit")
        D = np.asarray(D, dtype=float)
        C = 6 * x * D
        sc = ax.scatter(x, loss, c=np.log10(C), s=12, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="log10 FLOP (6ND)")
        for c in np.quantile(C, [0.25, 0.5, 0.75, 1.0]):
            n = np.geomspace(x.min(), x.max(), 200)
            ax.plot(n, fit.predict(n, c / (6 * n)), "-", color="0.3", lw=1)
        ax.set_xlabel("parameters N")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend(loc="best") if isinstance(fit, PowerLawFit) else None
    return fig
