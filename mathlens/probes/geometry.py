"""Geometry of representations: intrinsic dimension, neighbourhood overlap (THEORY.md §11.2 (5)).

Also re-exports the trajectory tools of :mod:`mathlens.probes.trajectories` (curvature along
tokens, velocity and turning through depth, residual to the per-token sphere) and the exact
k-nearest-neighbour search of :mod:`mathlens.probes.neighbors`, so that
``from mathlens.probes.geometry import ...`` reaches everything geometric.

Intrinsic dimension (both estimators follow scikit-dimension 0.5 definitions exactly):

* TwoNN (Facco et al. 2017). mu_i = r2(i) / r1(i) (2nd over 1st nearest-neighbour distance);
  under local uniformity mu ~ Pareto(1, d), F(mu) = 1 - mu^-d. Points with r1 = 0 (duplicates)
  have no ratio and are dropped (scikit-dimension drops them with a warning; we count them in
  ``n_dropped_``). Of the N remaining ratios the largest ``discard_fraction`` are discarded:
  with n_keep = int(N (1 - discard_fraction)) sorted ratios mu_(1..n_keep) and
  F_emp(mu_(i)) = i / N, d is the slope of the least-squares line through the origin of
  y_i = -log(1 - i/N) against x_i = log mu_(i):  d = sum x_i y_i / sum x_i^2.
* MLE (Levina & Bickel 2005, as in scikit-dimension's ``MLE`` defaults). With the k nearest
  distances R_1 <= ... <= R_k of point i, the local estimate is
  m_i = (k - 1) / sum_{j=1..k} log(R_k / R_j)   ((k - 2) with ``unbiased=True``),
  combined by ``comb``: "mle" (default) d = 1 / mean_i(1 / m_i) (MacKay & Ghahramani),
  "mean" or "median" of the m_i. k = 20 by default (scikit-dimension's ``n_neighbors``).
  Points with R_1 = 0 (a duplicate) are dropped and counted in ``n_dropped_``;
  scikit-dimension keeps them, and then its estimate degenerates to 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from mathlens.errors import MathlensError
from mathlens.probes.neighbors import as_points, knn, knn_checked, resolve_dtype
from mathlens.probes.trajectories import (
    CurvatureResult,
    DepthFlowResult,
    SphereResidual,
    depth_flow,
    sphere_residual,
    trajectory_curvature,
)

__all__ = [
    "CurvatureResult",
    "DepthFlowResult",
    "IntrinsicDimension",
    "OverlapResult",
    "SphereResidual",
    "depth_flow",
    "knn",
    "neighbourhood_overlap",
    "sphere_residual",
    "trajectory_curvature",
    "twonn_dimension",
    "mle_dimension",
]

_COMBS = ("mle", "mean", "median")


def twonn_dimension(r1: np.ndarray, r2: np.ndarray, discard_fraction: float = 0.1):
    """TwoNN estimate from first and second neighbour distances.

    r1, r2: (n_points,) -> (d, mu, n_dropped, n_used), mu: (n_points,) with NaN where r1 = 0.
    """
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu_all = r2 / r1
    finite = np.isfinite(mu_all)
    mu_all[~finite] = np.nan
    mu = mu_all[finite]
    N = mu.size
    n_keep = int(N * (1 - discard_fraction))
    if n_keep < 2:
        raise MathlensError(f"TwoNN needs at least 2 ratios after discarding, got {n_keep} of {N} points")
    x = np.log(np.sort(mu)[:n_keep])
    y = -np.log(1 - np.arange(1, n_keep + 1) / N)
    sxx = float(x @ x)
    if sxx == 0.0:
        raise MathlensError("TwoNN is undefined: every kept ratio r2/r1 equals 1 (equidistant neighbours)")
    return float(x @ y) / sxx, mu_all, int((~finite).sum()), n_keep


def mle_dimension(dists: np.ndarray, *, comb: str = "mle", unbiased: bool = False):
    """Levina-Bickel MLE from sorted neighbour distances.

    dists: (n_points, k) ascending -> (d, local (n_points,) with NaN for dropped points, n_dropped).
    """
    R = np.asarray(dists, dtype=np.float64)
    k = R.shape[1]
    kfac = k - 2 if unbiased else k - 1
    if kfac < 1:
        raise MathlensError(f"MLE needs k >= {3 if unbiased else 2} neighbours, got k={k}")
    ok = R[:, 0] > 0
    local = np.full(R.shape[0], np.nan)
    with np.errstate(divide="ignore"):
        s = np.log(R[ok, -1:] / R[ok]).sum(axis=1)
        local[ok] = kfac / s
    used = local[ok]
    if used.size == 0:
        raise MathlensError("MLE is undefined: every point has a duplicate (zero nearest-neighbour distance)")
    if comb == "mle":
        d = 1.0 / float(np.mean(1.0 / used))
    elif comb == "mean":
        d = float(np.mean(used))
    else:
        d = float(np.median(used))
    return d, local, int((~ok).sum())


class IntrinsicDimension:
    """Intrinsic dimension of a point cloud by TwoNN or MLE (scikit-learn-style estimator).

    >>> IntrinsicDimension(method="twonn").fit(H).dimension_   # H: (n_points, n_features)

    Settings: ``method`` "twonn" | "mle"; ``k`` neighbours for MLE (default 20; TwoNN uses 2);
    ``discard_fraction`` of the largest TwoNN ratios (default 0.1); ``comb`` and ``unbiased`` as
    scikit-dimension's MLE; ``device`` for the neighbour search (default: X's device, CPU for
    arrays); ``dtype`` of the distance matmul ("float32" | "float64"; neighbours are exact
    either way); ``chunk_size`` rows per distance block (default: bounded to 256 MiB).

    Results: ``dimension_`` (float), ``n_points_``, ``n_features_``, ``n_dropped_`` (points with
    a duplicate), ``distances_`` / ``indices_`` ((n_points, k) NumPy arrays); TwoNN: ``mu_``
    ((n_points,) ratios r2/r1, NaN if dropped), ``n_used_``; MLE: ``local_dimensions_``
    ((n_points,), NaN if dropped).
    """

    def __init__(self, method: str = "twonn", k: int | None = None, discard_fraction: float = 0.1,
                 comb: str = "mle", unbiased: bool = False, device=None, dtype="float32",
                 chunk_size: int | None = None):
        self.method = method
        self.k = k
        self.discard_fraction = discard_fraction
        self.comb = comb
        self.unbiased = unbiased
        self.device = device
        self.dtype = dtype
        self.chunk_size = chunk_size

    def _check(self) -> int:
        if self.method not in ("twonn", "mle"):
            raise MathlensError(f"method must be 'twonn' or 'mle', got {self.method!r}")
        if not (isinstance(self.discard_fraction, (int, float)) and 0 < self.discard_fraction < 1):
            raise MathlensError(f"discard_fraction must be in (0, 1), got {self.discard_fraction!r}")
        if self.comb not in _COMBS:
            raise MathlensError(f"comb must be one of {list(_COMBS)}, got {self.comb!r}")
        resolve_dtype(self.dtype)
        if self.method == "twonn":
            return 2
        k = 20 if self.k is None else self.k
        if not isinstance(k, int) or isinstance(k, bool) or k < 2:
            raise MathlensError(f"k must be an integer >= 2 for MLE, got {k!r}")
        return k

    def fit(self, X, y=None) -> IntrinsicDimension:
        """X: (n_points, n_features) array or tensor. Returns self with ``dimension_`` set."""
        k = self._check()
        Xt = as_points(X, device=self.device)
        n = Xt.shape[0]
        if n < k + 1:
            raise MathlensError(f"{self.method} with k={k} needs at least {k + 1} points, got {n}")
        d, i = knn_checked(Xt, k, dtype=self.dtype, chunk_size=self.chunk_size)
        self.distances_ = d.cpu().numpy()
        self.indices_ = i.cpu().numpy()
        self.n_points_, self.n_features_ = int(n), int(Xt.shape[1])
        self.k_ = k
        if self.method == "twonn":
            self.dimension_, self.mu_, self.n_dropped_, self.n_used_ = twonn_dimension(
                self.distances_[:, 0], self.distances_[:, 1], self.discard_fraction)
        else:
            self.dimension_, self.local_dimensions_, self.n_dropped_ = mle_dimension(
                self.distances_, comb=self.comb, unbiased=self.unbiased)
        return self

    def summary(self) -> dict:
        """JSON-ready summary of the fitted estimate (settings and scalar results)."""
        if not hasattr(self, "dimension_"):
            raise MathlensError("IntrinsicDimension is not fitted yet: call fit(X) first")
        out = {"method": self.method, "dimension": float(self.dimension_), "n_points": self.n_points_,
               "n_features": self.n_features_, "k": self.k_, "n_dropped": self.n_dropped_,
               "dtype": str(self.dtype)}
        if self.method == "twonn":
            out.update(discard_fraction=float(self.discard_fraction), n_used=self.n_used_)
        else:
            loc = self.local_dimensions_[np.isfinite(self.local_dimensions_)]
            out.update(comb=self.comb, unbiased=bool(self.unbiased),
                       local_dimension_mean=float(loc.mean()), local_dimension_std=float(loc.std()))
        return out

    to_dict = summary


@dataclass
class OverlapResult:
    """Neighbourhood overlap chi = mean_i |N_k^A(i) ∩ N_k^B(i)| / k (Valeriani et al. 2023)."""

    overlap: float
    std: float
    k: int
    n_points: int
    chance: float  # k / (n_points - 1): the expected overlap of unrelated representations

    def to_dict(self) -> dict:
        return asdict(self)


def neighbourhood_overlap(A, B, k: int = 10, *, device=None, dtype="float32") -> OverlapResult:
    """Overlap of the k-nearest-neighbour sets of the same points in two representations.

    A: (n_points, features_a), B: (n_points, features_b) (e.g. two layers' states of the same
    tokens). Returns an :class:`OverlapResult`; overlap is 1 for isometric representations.
    """
    At, Bt = as_points(A, name="A", device=device), as_points(B, name="B", device=device)
    if At.shape[0] != Bt.shape[0]:
        raise MathlensError(f"A and B must hold the same points, got {At.shape[0]} and {Bt.shape[0]} rows")
    _, ia = knn_checked(At, k, dtype=dtype)
    _, ib = knn_checked(Bt, k, dtype=dtype)
    shared = (ia[:, :, None] == ib[:, None, :]).any(dim=2).sum(dim=1).to(torch.float64) / k
    n = At.shape[0]
    return OverlapResult(overlap=float(shared.mean()), std=float(shared.std(unbiased=False)), k=int(k),
                         n_points=int(n), chance=float(k / (n - 1)))
