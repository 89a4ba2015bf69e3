"""Matrix-free algorithms on a symmetric operator (anything with ``matvec``, ``size``, ``dtype``, ``device``).

* :func:`lanczos` — top-k eigenpairs, Lanczos with full re-orthogonalisation (classical Gram–Schmidt
  applied twice); stops when every wanted Ritz pair has residual ``‖A y − θ y‖ = β_m |s_{m,i}| ≤ tol·|θ|``
  (for a symmetric matrix an eigenvalue lies within that residual of θ).
* :func:`eigsh_top` — the same through SciPy ARPACK ``eigsh`` on a ``LinearOperator`` (second
  implementation; float64 on the host).
* :func:`power_iteration` — PyHessian's loop, faithfully: ``λ_i = vᵀHv``, ``v ← Hv/‖Hv‖``, stop when
  ``|λ_i − λ_{i−1}| / (|λ_{i−1}| + 1e-6) < tol`` and return ``λ_{i−1}``; further eigenpairs by
  orthogonalising against those found.
* :func:`hutchinson` — ``tr A ≈ (1/m) Σ vᵢᵀ A vᵢ`` (Rademacher); std error = sample std / √m.
* :func:`hutchpp` — Hutch++ (Meyer, Musco, Musco, Woodruff 2021, Alg. 1) with ``m`` matvecs:
  ``tr(QᵀAQ) + (3/m) tr(Gᵀ(I−QQᵀ)A(I−QQᵀ)G)``, Q = orth(A S); std error of the second (random)
  term given Q.
* :func:`slq_density` — stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao 2019): per probe
  ``v``, the Lanczos nodes θ_j and weights τ_j = (e₁ᵀ s_j)² (Σ τ_j = 1); the density
  ``φ(t) = mean_v Σ_j τ_j N(t; θ_j, σ²)`` on a grid, which integrates to 1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch

from mathlens.errors import MathlensError

WHICH = ("LA", "LM", "SA")


@dataclass
class EigenResult:
    """The wanted eigenvalues, best first: descending for ``which="LA"``, by magnitude for ``"LM"``, ascending for
    ``"SA"`` (the smallest)."""

    eigenvalues: list[float]
    n_matvecs: int
    wall_time_s: float
    converged: bool
    method: str
    residuals: list[float] = field(default_factory=list)
    history: list[float] = field(default_factory=list)  # top estimate after each matvec/iteration
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)  # (k, n_params)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in
                ("eigenvalues", "n_matvecs", "wall_time_s", "converged", "method", "residuals", "history")}


@dataclass
class TraceResult:
    trace: float
    std_error: float
    n_matvecs: int
    method: str
    wall_time_s: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DensityResult:
    """Spectral density ``density: (n_grid,)`` on ``grid: (n_grid,)``; quadrature ``nodes``/``weights``
    ``(n_probes, n_iter)``; ``sigma`` the Gaussian broadening."""

    grid: list[float]
    density: list[float]
    nodes: list[list[float]]
    weights: list[list[float]]
    sigma: float
    n_matvecs: int
    wall_time_s: float = 0.0

    def mass(self, lo: float, hi: float) -> float:
        """Quadrature estimate of the fraction of eigenvalues in ``[lo, hi)``."""
        th, w = np.asarray(self.nodes), np.asarray(self.weights)
        return float((w * ((th >= lo) & (th < hi))).sum(axis=1).mean())

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _randn(op, seed: int) -> torch.Tensor:
    return torch.randn(op.size, generator=_generator(seed), dtype=torch.float64).to(op.device, op.dtype)


def _rademacher(op, n: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, size)`` random ±1 vectors."""
    r = torch.randint(0, 2, (n, op.size), generator=gen, dtype=torch.int8)
    return (2 * r - 1).to(op.device, op.dtype)


def _tridiag_eig(alphas: list[float], betas: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the Lanczos tridiagonal ``T: (m, m)`` in float64 (ascending)."""
    if len(alphas) == 1:
        return np.array(alphas, dtype=np.float64), np.ones((1, 1))
    return scipy.linalg.eigh_tridiagonal(np.array(alphas, dtype=np.float64),
                                         np.array(betas[: len(alphas) - 1], dtype=np.float64))


#: how wanted an eigenvalue is under each ``which`` (larger: more wanted)
_WANTED = {"LA": lambda x: x, "SA": lambda x: -x, "LM": np.abs}


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    return np.argsort(-_WANTED[which](theta), kind="stable")[:k]


def _orthogonalize(x: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``x`` minus its projection on the orthonormal rows of ``Q``: classical Gram–Schmidt applied twice."""
    for _ in range(2):
        x = x - Q.T @ (Q @ x)
    return x


def lanczos(op, k: int = 1, max_iter: int | None = None, tol: float = 1e-6, seed: int = 0,
            v0: torch.Tensor | None = None, which: str = "LA", return_eigenvectors: bool = True,
            check_multiplicity: bool = True) -> EigenResult:
    """Top-``k`` eigenpairs of the symmetric ``op`` by Lanczos with full re-orthogonalisation.

    ``max_iter``: at most this many matvecs in the main run (default ``min(size, max(40, 4k))``); ``v0: (size,)``
    a warm start (e.g. the previous top eigenvector), else a seeded Gaussian vector.

    A single Krylov space holds one direction of each eigenspace, so with full re-orthogonalisation the main run
    sees a repeated eigenvalue once. Two remedies: on a breakdown (an invariant subspace, e.g. the identity) the run
    restarts from a random vector orthogonal to it, so it never returns fewer than ``k`` pairs; and with
    ``check_multiplicity`` (``k ≥ 2``) a converged result is checked by Lanczos on the deflated operator
    ``(I − QQᵀ) A (I − QQᵀ)``, ``Q`` the Ritz vectors found: a wanted eigenvalue it finds beyond them (another
    copy of a repeated one) joins the result, and the check repeats until it finds none. That costs one more
    converged top-1 run (more if copies are found); the top eigenvalue itself (``k = 1``) never needs it.
    """
    if which not in WHICH:
        raise MathlensError(f"which must be one of {WHICH}, got {which!r}")
    n = op.size
    if not 1 <= k <= n:
        raise MathlensError(f"k must be between 1 and the number of parameters {n}, got {k}")
    m_max = min(n, max_iter if max_iter is not None else max(40, 4 * k))
    if m_max < k:
        raise MathlensError(f"max_iter={max_iter} is smaller than k={k}")
    t0 = time.perf_counter()
    v = (_randn(op, seed) if v0 is None else v0.detach().to(op.device, op.dtype).clone())
    if float(v.norm()) == 0:
        raise MathlensError("the Lanczos start vector v0 is zero")
    theta, vecs, res, history, converged, count = _lanczos_run(op, v, k, m_max, tol, which, seed)
    if check_multiplicity and converged and k >= 2 and k < n:
        key = _WANTED[which]
        for r in range(1, k + 1):  # at most k − 1 copies can be missing; the last round confirms none is
            defl = _Deflated(op, vecs)
            start = defl.project(_randn(op, seed + 7919 * r))
            if float(start.norm()) <= 1e-12 * math.sqrt(n):
                break
            mu, x, r_mu, _, ok, used = _lanczos_run(defl, start, 1, min(n - len(vecs), m_max), tol, which, seed + r)
            count += used
            if not ok or key(mu[0]) <= key(theta[-1]) + tol * max(abs(theta[-1]), 1e-30):
                break  # nothing wanted beyond the Ritz vectors (a non-converged check proves nothing either way)
            # x ⟂ Q, so its residual for A differs from the deflated one only by Q Qᵀ A x = O(the residuals of Q)
            theta, vecs, res = theta + mu, torch.cat([vecs, x]), res + r_mu
            order = sorted(range(len(theta)), key=lambda i: -key(theta[i]))[:k]
            theta, vecs, res = [theta[i] for i in order], vecs[order], [res[i] for i in order]
    return EigenResult([float(x) for x in theta], count, time.perf_counter() - t0, converged, "lanczos",
                       [float(r) for r in res], history, vecs if return_eigenvectors else None)


class _Deflated:
    """``(I − QQᵀ) A (I − QQᵀ)`` for orthonormal rows ``Q: (r, size)`` (the eigenvectors already found)."""

    def __init__(self, op, Q: torch.Tensor):
        self.op, self.Q = op, Q
        self.size, self.dtype, self.device = op.size, op.dtype, op.device

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return _orthogonalize(x, self.Q)

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.op.matvec(self.project(x)))


def _lanczos_run(op, v: torch.Tensor, k: int, m_max: int, tol: float, which: str, seed: int):
    """One Lanczos run from ``v``: (Ritz values, Ritz vectors ``(k, size)``, residuals, history, converged, matvecs).

    Stops when every wanted Ritz pair has residual ``β_m |s_{m,i}| ≤ tol·|θ|``. On a breakdown (β ≈ 0: the Krylov
    space is invariant, its Ritz values exact) it continues from a seeded random vector orthogonal to every
    Lanczos vector so far (T gets a zero off-diagonal), until the space is exhausted.
    """
    n = op.size
    v = v / v.norm()
    V = torch.empty((m_max, n), dtype=op.dtype, device=op.device)
    alphas, betas, history = [], [], []
    converged, beta, idx, res, restarts = False, 0.0, np.arange(1), np.zeros(1), 0
    for j in range(m_max):
        V[j] = v
        w = op.matvec(v)
        alpha = float(w @ v)
        w = w - alpha * v - (beta * V[j - 1] if j > 0 else 0.0)
        w = _orthogonalize(w, V[: j + 1])  # full re-orthogonalisation against every previous Lanczos vector
        beta = float(w.norm())
        alphas.append(alpha)
        theta, S = _tridiag_eig(alphas, betas + [beta])
        idx = _select(theta, min(k, j + 1), which)
        scale = max(float(np.abs(theta).max()), 1e-30)
        breakdown = beta <= 1e-12 * scale * math.sqrt(n)
        if breakdown:
            beta = 0.0  # the tridiagonal is block-diagonal from here on
        betas.append(beta)
        res = beta * np.abs(S[-1, idx])
        history.append(float(theta[idx[0]]))
        if j + 1 >= k and np.all(res <= tol * np.maximum(np.abs(theta[idx]), 1e-12 * scale)) and not (
                breakdown and j + 1 < k):
            converged = True
            break
        if j + 1 == m_max:
            break
        if breakdown:  # restart orthogonally to the invariant subspace found
            restarts += 1
            w = torch.randn(n, generator=_generator(seed + 104729 * restarts), dtype=torch.float64).to(op.device, op.dtype)
            w = _orthogonalize(w, V[: j + 1])
            v = w / w.norm()
        else:
            v = w / beta
    m = len(alphas)
    Sk = torch.as_tensor(S[:, idx], dtype=op.dtype, device=op.device)
    vecs = (V[:m].T @ Sk).T.contiguous()
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    return [float(x) for x in theta[idx]], vecs, [float(r) for r in res], history, converged, m


def eigsh_top(op, k: int = 1, tol: float = 1e-6, seed: int = 0, max_iter: int | None = None,
              which: str = "LA", return_eigenvectors: bool = True) -> EigenResult:
    """Top-``k`` eigenpairs by SciPy ``eigsh`` (ARPACK, implicitly restarted Lanczos) in float64."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    n, count = op.size, [0]
    if not 1 <= k < n:
        raise MathlensError(f"ARPACK needs 1 ≤ k < the number of parameters {n}, got k={k} (use lanczos for k = n)")

    def mv(x):
        count[0] += 1
        xt = torch.as_tensor(np.asarray(x).reshape(-1), dtype=op.dtype, device=op.device)
        return op.matvec(xt).detach().cpu().double().numpy()

    t0 = time.perf_counter()
    A = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    try:
        vals, vecs = eigsh(A, k=k, which=which, tol=tol, v0=v0, maxiter=max_iter)
        converged = True
    except ArpackNoConvergence as err:
        vals, vecs, converged = err.eigenvalues, err.eigenvectors, False
    order = _select(vals, len(vals), which)
    vals, vecs = vals[order], vecs[:, order]
    ev = torch.as_tensor(vecs.T.copy(), dtype=op.dtype, device=op.device) if return_eigenvectors else None
    return EigenResult([float(x) for x in vals], count[0], time.perf_counter() - t0, converged, "eigsh",
                       [], [], ev)


def power_iteration(op, k: int = 1, max_iter: int = 100, tol: float = 1e-3, seed: int = 0,
                    v0: torch.Tensor | None = None) -> EigenResult:
    """PyHessian's power iteration (dominant eigenvalues by magnitude), its stopping rule included."""
    if not 1 <= k <= op.size:
        raise MathlensError(f"k must be between 1 and the number of parameters {op.size}, got {k}")
    t0 = time.perf_counter()
    gen = _generator(seed)
    eigenvalues, eigenvectors, history, count = [], [], [], 0
    converged_all = True

    def orthonormal(v):
        for u in eigenvectors:
            v = v - (v @ u) * u
        return v / v.norm()

    for i in range(k):
        if v0 is not None and i == 0:
            v = v0.detach().to(op.device, op.dtype).clone()
        else:
            v = torch.randn(op.size, generator=gen, dtype=torch.float64).to(op.device, op.dtype)
        v = v / v.norm()
        eigenvalue, converged = None, False
        for _ in range(max_iter):
            v = orthonormal(v)
            Hv = op.matvec(v)
            count += 1
            tmp = float(Hv @ v)
            if float(Hv.norm()) == 0:  # v is in the null space: eigenvalue 0, exactly
                eigenvalue, converged = 0.0, True
                break
            v = Hv / Hv.norm()
            if i == 0:
                history.append(tmp)
            if eigenvalue is None:
                eigenvalue = tmp
            elif abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol:
                converged = True
                break
            else:
                eigenvalue = tmp
        converged_all &= converged
        eigenvalues.append(eigenvalue)
        eigenvectors.append(v)
    order = sorted(range(k), key=lambda j: -eigenvalues[j])
    vecs = torch.stack([eigenvectors[j] for j in order])
    return EigenResult([eigenvalues[j] for j in order], count, time.perf_counter() - t0, converged_all,
                       "power", [], history, vecs)


def hutchinson(op, n_samples: int = 100, seed: int = 0) -> TraceResult:
    """Hutchinson's estimator with ``n_samples`` Rademacher probes; std error = std(ddof=1)/√m."""
    if n_samples < 2:
        raise MathlensError(f"n_samples must be >= 2 for a standard error, got {n_samples}")
    t0 = time.perf_counter()
    gen = _generator(seed)
    vals = []
    for _ in range(n_samples):
        v = _rademacher(op, 1, gen)[0]
        vals.append(float(v @ op.matvec(v)))
    x = np.array(vals)
    return TraceResult(float(x.mean()), float(x.std(ddof=1) / math.sqrt(n_samples)), n_samples, "hutchinson",
                       time.perf_counter() - t0)


def hutchpp(op, n_matvecs: int = 99, seed: int = 0) -> TraceResult:
    """Hutch++ with ``n_matvecs`` products (split in three equal parts; at least 6)."""
    s = n_matvecs // 3
    if s < 2:
        raise MathlensError(f"Hutch++ needs n_matvecs >= 6, got {n_matvecs}")
    t0 = time.perf_counter()
    gen = _generator(seed)
    S, G = _rademacher(op, s, gen), _rademacher(op, s, gen)  # (s, n) each
    AS = torch.stack([op.matvec(x) for x in S], dim=1)  # (n, s)
    Q, _ = torch.linalg.qr(AS)  # (n, s)
    AQ = torch.stack([op.matvec(q) for q in Q.T], dim=1)
    t_low = float((Q * AQ).sum())
    X = G.T - Q @ (Q.T @ G.T)  # (n, s): (I − QQᵀ) G
    vals = np.array([float(x @ op.matvec(x)) for x in X.T])
    return TraceResult(t_low + float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(s)), 3 * s, "hutch++",
                       time.perf_counter() - t0)


def _slq_probe(op, v: torch.Tensor, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes θ_j and weights τ_j = (e₁ᵀ s_j)² of the ``m``-point Gauss quadrature seen from ``v``."""
    v = v / v.norm()
    V = torch.empty((m, op.size), dtype=op.dtype, device=op.device)
    alphas, betas, beta = [], [], 0.0
    for j in range(m):
        V[j] = v
        w = op.matvec(v)
        alpha = float(w @ v)
        w = w - alpha * v - (beta * V[j - 1] if j > 0 else 0.0)
        w = _orthogonalize(w, V[: j + 1])
        beta = float(w.norm())
        alphas.append(alpha)
        betas.append(beta)
        if beta <= 1e-10 * max(abs(a) for a in alphas):
            break
        v = w / beta
    theta, S = _tridiag_eig(alphas, betas)
    return theta, S[0] ** 2


def slq_density(op, n_probes: int = 8, n_iter: int = 50, seed: int = 0, n_grid: int = 1000,
                sigma_rel: float = 0.01, sigma: float | None = None) -> DensityResult:
    """SLQ spectral density with Gaussian broadening ``σ = sigma_rel · (θ_max − θ_min)`` (or ``sigma``).

    The grid spans ``[θ_min − 6σ, θ_max + 6σ]`` so the density integrates to 1 (trapezoid rule).
    """
    if n_probes < 1 or n_iter < 1:
        raise MathlensError(f"n_probes and n_iter must be >= 1, got {n_probes}, {n_iter}")
    t0 = time.perf_counter()
    gen = _generator(seed)
    m = min(n_iter, op.size)
    nodes = np.zeros((n_probes, m))
    weights = np.zeros((n_probes, m))
    count = 0
    for p in range(n_probes):
        v = torch.randn(op.size, generator=gen, dtype=torch.float64).to(op.device, op.dtype)
        th, w = _slq_probe(op, v, m)
        count += len(th)
        nodes[p, : len(th)], weights[p, : len(th)] = th, w
        nodes[p, len(th):] = th[-1]  # padded with zero weight
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        # a spread of a few rounding units is a degenerate spectrum (e.g. c·I): broaden relative to its scale
        scale = max(abs(hi), abs(lo), 1.0)
        sigma = sigma_rel * (hi - lo) if hi - lo > 1e-8 * scale else sigma_rel * scale
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, n_grid)
    dens = np.zeros(n_grid)
    for th, w in zip(nodes, weights):
        dens += (w[:, None] * np.exp(-0.5 * ((grid[None, :] - th[:, None]) / sigma) ** 2)).sum(0)
    dens /= n_probes * sigma * math.sqrt(2 * math.pi)
    return DensityResult(grid.tolist(), dens.tolist(), nodes.tolist(), weights.tolist(), float(sigma), count,
                         time.perf_counter() - t0)
