import json

import numpy as np
import pytest

from mathlens.errors import MathlensError
from mathlens.stats import (
    CI,
    bootstrap_ci,
    difference_ci,
    paired_difference_ci,
    paired_t_ci,
    slope_ci,
    t_ci,
    welch_ci,
)


def _coverage(method, reps=300, n=40, n_boot=400):
    rng = np.random.default_rng(123)
    hits = 0
    for r in range(reps):
        x = rng.normal(2.0, 3.0, size=n)
        hits += bootstrap_ci(x, n_boot=n_boot, seed=r, method=method).contains(2.0)
    return hits / reps


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_coverage_normal_mean(method):
    # Nominal 95 %. The percentile interval for the mean of n=40 normals under-covers slightly
    # (~93.5 %); with 300 repetitions the binomial sd is 1.3 %, so [0.90, 0.985] is ~3 sd wide.
    cov = _coverage(method)
    assert 0.90 <= cov <= 0.985, cov


def test_constant_values_give_degenerate_ci():
    ci = bootstrap_ci(np.full(17, 3.25), n_boot=200)
    assert (ci.estimate, ci.low, ci.high, ci.n) == (3.25, 3.25, 3.25, 17)
    ci = bootstrap_ci(np.full(5, -1.0), n_boot=50, method="bca")
    assert ci.low == ci.high == -1.0


def test_seed_reproducible_and_seed_sensitive():
    x = np.random.default_rng(0).exponential(size=50)
    a, b = bootstrap_ci(x, seed=7, n_boot=300), bootstrap_ci(x, seed=7, n_boot=300)
    c = bootstrap_ci(x, seed=8, n_boot=300)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)


def test_bootstrap_width_matches_t_interval():
    # For n=400 normal data the percentile CI of the mean ≈ the t interval (width within 10 %).
    x = np.random.default_rng(1).normal(size=400)
    b, t = bootstrap_ci(x, n_boot=4000), t_ci(x)
    assert abs(b.width / t.width - 1) < 0.1
    assert b.estimate == pytest.approx(x.mean())


def test_non_vectorised_statistic():
    x = np.arange(10.0)
    ci = bootstrap_ci(x, statistic=lambda v: float(np.max(v) - np.min(v)), n_boot=100)
    assert ci.estimate == 9.0 and 0 <= ci.low <= ci.high <= 9.0


def test_bca_corrects_skewed_statistic_direction():
    # exp(mean) of normal data: BCa shifts the interval relative to percentile; both contain e^0.
    x = np.random.default_rng(2).normal(size=200)
    p = bootstrap_ci(x, statistic=lambda v, axis=None: np.exp(np.mean(v, axis=axis)), n_boot=2000)
    q = bootstrap_ci(x, statistic=lambda v, axis=None: np.exp(np.mean(v, axis=axis)), n_boot=2000,
                     method="bca")
    assert p.contains(1.0) and q.contains(1.0)
    assert p.method == "percentile" and q.method == "bca"
    assert (p.low, p.high) != (q.low, q.high)


def test_paired_difference_detects_shift_independent_does_not():
    rng = np.random.default_rng(3)
    base = rng.normal(0, 5, size=60)
    a, b = base + 0.5 + rng.normal(0, 0.1, 60), base
    paired = paired_difference_ci(a, b, n_boot=1000)
    indep = difference_ci(a, b, n_boot=1000)
    assert paired.excludes(0.0) and paired.contains(0.5)
    assert indep.contains(0.0)  # between-subject noise (sd 5) swamps the 0.5 shift
    assert paired.estimate == pytest.approx(indep.estimate)
    assert indep.n == 120


def test_slope_ci_exact_line_and_power_law():
    x = np.arange(1.0, 11.0)
    ci = slope_ci(x, 3 * x - 2, n_boot=200)
    assert (ci.estimate, ci.low, ci.high) == pytest.approx((3.0, 3.0, 3.0))
    h = np.array([0.1, 0.05, 0.025, 0.0125])
    err = 7 * h**2 * np.exp(np.random.default_rng(4).normal(0, 0.01, 4))
    order = slope_ci(h, err, log=True, n_boot=500)
    assert abs(order.estimate - 2.0) < 0.05 and order.contains(2.0)


def test_ci_to_dict_json_and_errors():
    ci = bootstrap_ci([1.0, 2.0, 3.0], n_boot=10)
    d = json.loads(json.dumps(ci.to_dict()))
    assert set(d) == {"estimate", "low", "high", "level", "n", "method"} and d["level"] == 0.95
    assert CI(1.0, 0.5, 1.5, 0.95, 3, "x").excludes(2.0)
    with pytest.raises(MathlensError):
        bootstrap_ci([])
    with pytest.raises(MathlensError):
        bootstrap_ci([1.0, np.nan])
    with pytest.raises(MathlensError):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(MathlensError):
        paired_difference_ci([1.0, 2.0], [1.0])
    with pytest.raises(MathlensError):
        slope_ci([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(MathlensError):
        slope_ci([1.0, 2.0, 3.0], [1.0, -2.0, 3.0], log=True)


def test_t_intervals_cover_at_three_seeds_where_the_bootstrap_cannot():
    """Means of n = 3 normal values (a suite's seeds): the t interval covers the true mean 95 % of the time;
    the percentile bootstrap of 3 values is their range (each extreme has bootstrap mass 1/27 > 2.5 %) and
    covers 1 − 2·(1/2)³ = 75 %. 2000 repetitions: binomial sd 0.5 % and 1 %."""
    rng = np.random.default_rng(5)
    t_hits = boot_hits = 0
    for r in range(2000):
        x = rng.normal(1.0, 2.0, size=3)
        t_hits += t_ci(x).contains(1.0)
        b = bootstrap_ci(x, n_boot=400, seed=r)
        boot_hits += b.contains(1.0)
        assert x.min() - 1e-12 <= b.low and b.high <= x.max() + 1e-12  # never wider than the 3 values' range
    assert abs(t_hits / 2000 - 0.95) < 0.015
    assert abs(boot_hits / 2000 - 0.75) < 0.03


def test_t_intervals_against_scipy():
    from scipy import stats

    rng = np.random.default_rng(2)
    a, b = rng.normal(0.3, 1.0, 6), rng.normal(0.0, 2.0, 9)
    ref = stats.ttest_1samp(a, 0.0).confidence_interval(0.95)
    ci = t_ci(a)
    assert (ci.low, ci.high, ci.method, ci.n) == (pytest.approx(ref.low), pytest.approx(ref.high), "t", 6)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    ci = welch_ci(a, b)
    assert (ci.low, ci.high, ci.estimate) == (pytest.approx(ref.low), pytest.approx(ref.high), pytest.approx(a.mean() - b.mean()))
    assert ci.method == "welch-t" and ci.n == 15
    c = a + rng.normal(0.1, 0.01, 6)  # paired: the per-seed differences are what vary
    ref = stats.ttest_rel(c, a).confidence_interval(0.95)
    ci = paired_t_ci(c, a)
    assert (ci.low, ci.high, ci.method) == (pytest.approx(ref.low), pytest.approx(ref.high), "paired-t")
    assert ci.width < welch_ci(c, a).width / 10  # pairing removes the seed-to-seed spread
    assert t_ci([2.0]).low == t_ci([2.0]).high == 2.0 and welch_ci([1.0, 1.0], [0.0, 0.0]).width == 0.0
    with pytest.raises(MathlensError):
        paired_t_ci([1.0, 2.0], [1.0])
    with pytest.raises(MathlensError):
        welch_ci([1.0], [1.0, 2.0])


def test_verdicts_need_two_seeds_and_a_known_direction():
    from mathlens.experiments.base import verdict_above, verdict_difference

    assert verdict_above([0.01], 0.0)[1] == "inconclusive"  # one seed: a point, not an interval
    assert verdict_difference([1.0], [0.99])[1] == "inconclusive"
    assert verdict_above([0.01, 0.011, 0.012], 0.0)[1] == "supported"
    with pytest.raises(MathlensError, match="direction"):
        verdict_difference([1.0, 1.1], [0.0, 0.1], ">=")
