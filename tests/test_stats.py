"""analysis.stats against scipy itself, and a coverage simulation of each interval method: thousands of simulated
studies with a known mean, n = 3, 5 and 10 seeds, normal and bimodal (train-or-collapse) per-seed accuracies."""
import numpy as np
import pytest
from scipy import stats as sp

from analysis import stats
from analysis.claims import unstable


def test_t_interval_is_scipys_t_interval():
    x = np.array([0.81, 0.86, 0.78, 0.9])
    want = sp.t.interval(0.95, 3, loc=x.mean(), scale=sp.sem(x))
    assert stats.t_interval(x) == pytest.approx(want, rel=1e-12)
    assert stats.t_interval(np.array([0.1, 0.9, 0.15]), bounds=(0, 1))[0] == 0.0  # clipped: t leaves [0, 1] here


def test_bca_interval_is_scipys_bca_bootstrap():
    x = np.array([0.17, 0.12, 0.96, 0.5, 0.7])
    want = sp.bootstrap((x,), np.mean, method="BCa", n_resamples=stats.BOOTSTRAP_RESAMPLES,
                        random_state=np.random.default_rng(0)).confidence_interval
    assert stats.bca_interval(x) == pytest.approx(tuple(want), rel=1e-12)
    assert stats.bca_interval(np.array([0.3, 0.3, 0.3])) == (0.3, 0.3)


def test_logit_t_interval_is_a_t_interval_on_the_logit_scale():
    x = np.array([0.17, 0.12, 0.96])
    lo, hi = sp.t.interval(0.95, 2, loc=sp.logistic.ppf(x).mean(), scale=sp.sem(sp.logistic.ppf(x)))
    assert stats.logit_t_interval(x) == pytest.approx((sp.logistic.cdf(lo), sp.logistic.cdf(hi)), rel=1e-12)
    d = np.array([-0.8, 0.1, 0.9])  # a difference of two accuracies: [-1, 1]
    lo, hi = stats.logit_t_interval(d, bounds=(-1, 1))
    assert -1 < lo < hi < 1


def test_rates_are_scipys_exact_interval_and_test():
    ci = sp.binomtest(2, 8).proportion_ci(method="exact")
    assert stats.clopper_pearson(2, 8) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert stats.lower_rate_p(0, 8, 5, 8) == pytest.approx(
        sp.fisher_exact([[0, 8], [5, 3]], alternative="less").pvalue, rel=1e-12)


def test_seeds_needed_is_the_first_n_whose_t_half_width_clears_the_margin():
    n = stats.seeds_needed_t(0.03, 0.05, "above", 0.0)
    half = lambda k: sp.t.ppf(0.975, k - 1) * 0.05 / np.sqrt(k)  # noqa: E731
    assert half(n) < 0.03 <= half(n - 1)
    assert stats.seeds_needed_t(0.03, 0.05, "within", 0.02) is None  # the mean is outside the margin
    assert stats.seeds_needed_t(0.0, 0.05, "above", 0.0) is None
    k = stats.seeds_needed_rates(0, 3, 2, 3)
    assert stats.lower_rate_p(0, k, round(2 / 3 * k), k) < 0.05 <= stats.lower_rate_p(0, k - 1, round(2 / 3 * (k - 1)),
                                                                                          k - 1)


def test_unstable_is_diverged_or_near_chance():
    assert unstable("diverged", float("nan"), 0.1) == 1.0
    assert unstable("done", 0.17, 0.1) == 1.0 and unstable("done", 0.96, 0.1) == 0.0
    assert np.isnan(unstable("running", 0.5, 0.1))


STUDIES = 2000
TRUE = {"normal": 0.80, "bimodal": 0.6 * 0.95 + 0.4 * 0.15}  # the known mean of each per-seed distribution


def simulate(dist, n, rng):
    if dist == "normal":
        return rng.normal(TRUE["normal"], 0.05, (STUDIES, n))
    trains = rng.random((STUDIES, n)) < 0.6  # a seed trains (0.95) or collapses (0.15), +- a little noise
    return np.where(trains, 0.95, 0.15) + rng.normal(0, 0.01, (STUDIES, n))


def coverage(method, dist, n, seed=0):
    x = simulate(dist, n, np.random.default_rng(seed))
    hits = [lo <= TRUE[dist] <= hi for lo, hi in (stats.mean_interval(row, method, bounds=(0, 1)) for row in x)]
    return float(np.mean(hits))


# Tolerance 0.03 either way (binomial sd at 2000 studies ~ 0.005-0.01). What it shows: t is at 95% for normal
# values at every n and for bimodal ones at 10 seeds; no method reaches it for bimodal values at 3 seeds (28% of
# studies see one mode only); BCa under-covers at 3-10 seeds; logit-t covers the back-transformed logit mean, not
# the mean, so it under-covers bimodal values at 10. Hence claims use t, clipped to the statistic's range.
COVERAGE = {  # method, n, distribution -> coverage measured at STUDIES = 2000, seed 0
    ("t", 3, "normal"): 0.952, ("t", 3, "bimodal"): 0.727, ("t", 5, "normal"): 0.942, ("t", 5, "bimodal"): 0.908,
    ("t", 10, "normal"): 0.945, ("t", 10, "bimodal"): 0.942,
    ("bca", 3, "normal"): 0.730, ("bca", 3, "bimodal"): 0.727, ("bca", 5, "normal"): 0.839,
    ("bca", 5, "bimodal"): 0.906, ("bca", 10, "normal"): 0.898, ("bca", 10, "bimodal"): 0.967,
    ("logit-t", 3, "normal"): 0.951, ("logit-t", 3, "bimodal"): 0.727, ("logit-t", 5, "normal"): 0.950,
    ("logit-t", 5, "bimodal"): 0.908, ("logit-t", 10, "normal"): 0.946, ("logit-t", 10, "bimodal"): 0.849,
}
NOMINAL_WHERE_IT_FITS = [("t", n, "normal") for n in (3, 5, 10)] + [("t", 10, "bimodal")]


@pytest.mark.slow
@pytest.mark.parametrize("dist", ["normal", "bimodal"])
@pytest.mark.parametrize("n", [3, 5, 10])
@pytest.mark.parametrize("method", stats.METHODS)
def test_coverage(method, n, dist):
    got = coverage(method, dist, n)
    print(f"coverage {method} n={n} {dist}: {got:.3f}")
    assert got == pytest.approx(COVERAGE[method, n, dist], abs=0.03)
    if (method, n, dist) in NOMINAL_WHERE_IT_FITS:
        assert got >= 0.93
