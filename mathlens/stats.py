"""Confidence intervals: the project's one place for them.

Every interval is a :class:`CI` (estimate, low, high, level, n, method).

Student t intervals (:func:`t_ci`, :func:`paired_t_ci`, :func:`welch_ci`) serve means over a handful of
seeds: a percentile bootstrap of the mean of n = 3 values is the range of the values (each extreme carries
1/27 > 2.5 % of the bootstrap mass), which covers the true mean ~74 % of the time, not 95 %; the t interval
is exact for normal errors at any n. The bootstrap serves larger samples and statistics without a closed
form. Bootstrap resampling is with
replacement over the given observations (or over (x, y) points for :func:`slope_ci`), driven by a
``numpy.random.Generator`` seeded with ``seed``, so results are reproducible bit for bit.

Methods: ``"percentile"`` (Efron's percentile interval: the α/2 and 1 − α/2 quantiles of the
bootstrap distribution) and ``"bca"`` (bias-corrected and accelerated, Efron 1987: bias z0 from
the fraction of bootstrap statistics below the estimate, acceleration a from the jackknife skewness).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from mathlens.errors import MathlensError

__all__ = ["CI", "bootstrap_ci", "paired_difference_ci", "difference_ci", "slope_ci", "ols_slope", "ci_from_bootstrap",
           "t_ci", "paired_t_ci", "welch_ci"]

METHODS = ("percentile", "bca")


@dataclass
class CI:
    """A confidence interval: ``estimate`` (statistic on the full sample), ``[low, high]`` at
    confidence ``level`` (e.g. 0.95), from ``n`` observations by ``method``."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    method: str

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in asdict(self).items()}

    def excludes(self, value: float) -> bool:
        """True when ``value`` lies outside ``[low, high]`` (e.g. ``excludes(0)``: a significant effect)."""
        return bool(value < self.low or value > self.high)

    def contains(self, value: float) -> bool:
        return not self.excludes(value)

    @property
    def width(self) -> float:
        return float(self.high - self.low)


def _as_1d(values, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size == 0:
        raise MathlensError(f"{name}: no values to bootstrap")
    if not np.all(np.isfinite(x)):
        raise MathlensError(f"{name}: contains NaN or infinite values")
    return x


def _check(n_boot: int, alpha: float, method: str) -> None:
    if n_boot < 1:
        raise MathlensError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise MathlensError(f"alpha must be in (0, 1), got {alpha}")
    if method not in METHODS:
        raise MathlensError(f"method must be one of {METHODS}, got {method!r}")


def _apply(statistic: Callable, samples: np.ndarray) -> np.ndarray:
    """Statistic of each row of ``samples: (n_boot, n)``; vectorised when it takes ``axis``."""
    try:
        out = np.asarray(statistic(samples, axis=1), dtype=float)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([float(statistic(row)) for row in samples])


def _interval(boot: np.ndarray, estimate: float, alpha: float, method: str, jack: np.ndarray | None):
    """Quantiles of the bootstrap distribution ``boot`` (percentile or BCa with jackknife ``jack``)."""
    lo_q, hi_q = alpha / 2, 1 - alpha / 2
    if method == "bca":
        below = np.mean(boot < estimate) + 0.5 * np.mean(boot == estimate)
        z0 = ndtri(np.clip(below, 1e-10, 1 - 1e-10))
        d = jack.mean() - jack
        denom = 6.0 * np.sum(d**2) ** 1.5
        a = np.sum(d**3) / denom if denom > 0 else 0.0
        qs = []
        for q in (lo_q, hi_q):
            z = ndtri(q)
            qs.append(float(ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))))
        lo_q, hi_q = qs
    low, high = np.quantile(boot, [lo_q, hi_q])
    return float(low), float(high)


def _jackknife(statistic: Callable, x: np.ndarray) -> np.ndarray:
    """Leave-one-out statistics of x: (n,) -> (n,), evaluated in chunks of rows (bounded memory)."""
    n = x.shape[0]
    out = np.empty(n)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        keep = np.ones((rows.size, n), dtype=bool)
        keep[np.arange(rows.size), rows] = False
        out[rows] = _apply(statistic, np.broadcast_to(x, keep.shape)[keep].reshape(rows.size, n - 1))
    return out


def bootstrap_ci(values, statistic: Callable = np.mean, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0, method: str = "percentile") -> CI:
    """Bootstrap CI of ``statistic(values)``.

    values: (n,) observations (flattened). ``statistic`` maps an array to a float; if it accepts
    ``axis=`` (like ``np.mean``, ``np.median``) all resamples are evaluated in one call.
    """
    _check(n_boot, alpha, method)
    x = _as_1d(values, "values")
    estimate = float(statistic(x))
    rng = np.random.default_rng(seed)
    boot = _apply(statistic, x[rng.integers(0, x.size, size=(n_boot, x.size))])
    jack = _jackknife(statistic, x) if method == "bca" and x.size > 1 else np.zeros(1)
    low, high = _interval(boot, estimate, alpha, method, jack)
    return CI(estimate, low, high, 1 - alpha, int(x.size), method)


def paired_difference_ci(a, b, statistic: Callable = np.mean, n_boot: int = 2000, alpha: float = 0.05,
                         seed: int = 0, method: str = "percentile") -> CI:
    """CI of ``statistic(a - b)`` for paired observations a, b: (n,) (e.g. the same seeds or batches
    measured under two conditions); pairs are resampled together."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise MathlensError(f"paired samples must have equal length, got {a.size} and {b.size}")
    ci = bootstrap_ci(a - b, statistic, n_boot, alpha, seed, method)
    ci.method = f"paired-{method}"
    return ci


def difference_ci(a, b, statistic: Callable = np.mean, n_boot: int = 2000, alpha: float = 0.05,
                  seed: int = 0) -> CI:
    """Percentile CI of ``statistic(a) - statistic(b)`` for independent groups a: (n_a,), b: (n_b,);
    each group is resampled separately. ``n`` of the result is n_a + n_b."""
    _check(n_boot, alpha, "percentile")
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    rng = np.random.default_rng(seed)
    boot_a = _apply(statistic, a[rng.integers(0, a.size, size=(n_boot, a.size))])
    boot_b = _apply(statistic, b[rng.integers(0, b.size, size=(n_boot, b.size))])
    estimate = float(statistic(a)) - float(statistic(b))
    low, high = _interval(boot_a - boot_b, estimate, alpha, "percentile", None)
    return CI(estimate, low, high, 1 - alpha, int(a.size + b.size), "independent-percentile")


def ols_slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """OLS slope of y on x along the last axis. x, y: (..., n) -> (...)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    sxx = np.sum(xc * xc, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(xc * yc, axis=-1) / sxx


def slope_ci(x, y, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0, log: bool = False) -> CI:
    """OLS slope of y on x with a percentile bootstrap CI over (x, y) points.

    x, y: (n,) with n >= 3 and at least two distinct x. ``log=True`` fits log y on log x (both must
    be positive): the slope is then the power-law exponent / convergence order. Resamples whose x
    are all equal (no slope) are drawn again.
    """
    _check(n_boot, alpha, "percentile")
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    if x.shape != y.shape:
        raise MathlensError(f"x and y must have equal length, got {x.size} and {y.size}")
    if x.size < 3 or np.ptp(x) == 0:
        raise MathlensError("slope needs at least 3 points with at least two distinct x values")
    if log:
        if np.any(x <= 0) or np.any(y <= 0):
            raise MathlensError("log-log slope needs positive x and y")
        x, y = np.log(x), np.log(y)
    estimate = float(ols_slope(x, y))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boot = ols_slope(x[idx], y[idx])
    for _ in range(100):  # redraw degenerate resamples (all x equal)
        bad = ~np.isfinite(boot)
        if not bad.any():
            break
        idx_bad = rng.integers(0, x.size, size=(int(bad.sum()), x.size))
        boot[bad] = ols_slope(x[idx_bad], y[idx_bad])
    boot = boot[np.isfinite(boot)]
    low, high = _interval(boot, estimate, alpha, "percentile", None)
    return CI(estimate, low, high, 1 - alpha, int(x.size), "pairs-percentile")


def t_ci(values, alpha: float = 0.05) -> CI:
    """Student t interval for the mean of ``values: (n,)``: ``x̄ ± t_{n−1, 1−α/2} s / √n`` (a point for n = 1)."""
    from scipy.stats import t as student_t

    x = _as_1d(values, "values")
    m = float(x.mean())
    if x.size < 2:
        return CI(m, m, m, 1 - alpha, 1, "t")
    half = float(student_t.ppf(1 - alpha / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return CI(m, m - half, m + half, 1 - alpha, int(x.size), "t")


def paired_t_ci(a, b, alpha: float = 0.05) -> CI:
    """t interval for ``mean(a − b)``, a, b: (n,) paired observations (the same seeds under two conditions)."""
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.shape != b.shape:
        raise MathlensError(f"paired samples must have equal length, got {a.size} and {b.size}")
    ci = t_ci(a - b, alpha)
    ci.method = "paired-t"
    return ci


def welch_ci(a, b, alpha: float = 0.05) -> CI:
    """Welch t interval for ``mean(a) − mean(b)`` of independent groups a: (n_a,), b: (n_b,), each n ≥ 2
    (Welch–Satterthwaite degrees of freedom). ``n`` of the result is n_a + n_b."""
    from scipy.stats import t as student_t

    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    if a.size < 2 or b.size < 2:
        raise MathlensError(f"a Welch interval needs at least 2 values per group, got {a.size} and {b.size}")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    d = float(a.mean() - b.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return CI(d, d, d, 1 - alpha, int(a.size + b.size), "welch-t")
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(student_t.ppf(1 - alpha / 2, df) * se)
    return CI(d, d - half, d + half, 1 - alpha, int(a.size + b.size), "welch-t")


def ci_from_bootstrap(boot, estimate: float, n: int, alpha: float = 0.05, method: str = "percentile") -> CI:
    """Percentile CI from an already computed bootstrap distribution ``boot: (n_boot,)`` (for
    statistics that need a refit per resample, e.g. scaling-law parameters). NaNs are dropped."""
    boot = np.asarray(boot, dtype=float).reshape(-1)
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return CI(float(estimate), float("nan"), float("nan"), 1 - alpha, int(n), method)
    low, high = _interval(boot, float(estimate), alpha, "percentile", None)
    return CI(float(estimate), low, high, 1 - alpha, int(n), method)
