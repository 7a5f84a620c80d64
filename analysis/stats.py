"""Intervals and exact tests for claims, all from scipy.stats: the t interval (clipped to the statistic's range),
a BCa bootstrap over seeds, a t interval on the logit scale (inside the range by construction), Clopper-Pearson
intervals for rates and Fisher's exact test for "setting a has a lower rate than setting b"; and the seeds an
inconclusive interval would need (an estimate at the spread observed)."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

METHODS = ("t", "bca", "logit-t")
BOOTSTRAP_RESAMPLES = 2000
EPS = 1e-3  # logit-t: values at the ends of the range are moved this fraction of its width inside


def _clip(lo: float, hi: float, bounds) -> tuple[float, float]:
    if bounds is None:
        return lo, hi
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


def t_interval(x: np.ndarray, level: float = 0.95, bounds=None) -> tuple[float, float]:
    """mean +- t_{(1+level)/2, n-1} s / sqrt(n) (scipy.stats.t), clipped to `bounds` (lo, hi) where given."""
    n, std = len(x), x.std(ddof=1)
    if not std > 0:  # a constant sample: the point itself
        return _clip(float(x.mean()), float(x.mean()), bounds)
    lo, hi = stats.t.interval(level, n - 1, loc=x.mean(), scale=std / math.sqrt(n))
    return _clip(float(lo), float(hi), bounds)


def bca_interval(x: np.ndarray, level: float = 0.95, bounds=None, seed: int = 0) -> tuple[float, float]:
    """BCa bootstrap interval of the mean over seeds (scipy.stats.bootstrap; a paired comparison is the
    bootstrap of its per-seed differences, so seeds are resampled as pairs); inside the range of the data, hence of
    `bounds`. A constant sample gives the point."""
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    res = stats.bootstrap((x,), np.mean, confidence_level=level, method="BCa", n_resamples=BOOTSTRAP_RESAMPLES,
                          random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa degenerate (e.g. n = 2): the percentile interval
        lo, hi = stats.bootstrap((x,), np.mean, confidence_level=level, method="percentile",
                                 n_resamples=BOOTSTRAP_RESAMPLES, random_state=np.random.default_rng(seed)
                                 ).confidence_interval
    return _clip(float(lo), float(hi), bounds)


def logit_t_interval(x: np.ndarray, level: float = 0.95, bounds=(0.0, 1.0)) -> tuple[float, float]:
    """A t interval on the logit scale of x mapped to (0, 1) from `bounds` (values at an end moved EPS of the
    width inside), mapped back: it lies inside the range by construction. It covers the mean of the logits'
    back-transform, not the arithmetic mean, so it suits values that are not near both ends at once."""
    a, b = bounds
    u = np.clip((x - a) / (b - a), EPS, 1 - EPS)
    lo, hi = t_interval(stats.logistic.ppf(u), level)
    return float(a + (b - a) * stats.logistic.cdf(lo)), float(a + (b - a) * stats.logistic.cdf(hi))


def mean_interval(x, method: str = "t", level: float = 0.95, bounds=None) -> tuple[float, float]:
    """The interval of the mean of the finite values `x` (n >= 2) by `method` (one of METHODS)."""
    x = np.asarray(x, dtype=float)
    if method == "t":
        return t_interval(x, level, bounds)
    if method == "bca":
        return bca_interval(x, level, bounds)
    if method == "logit-t":
        return logit_t_interval(x, level, bounds if bounds is not None else (0.0, 1.0))
    raise ValueError(f"unknown interval method {method!r}; expected one of {METHODS}")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a rate k / n (scipy.stats.binomtest(...).proportion_ci)."""
    if n == 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def lower_rate_p(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """One-sided p of Fisher's exact test (scipy.stats.fisher_exact) for "the rate of a is lower than b's"."""
    return float(stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]], alternative="less").pvalue)


def seeds_needed_t(mean: float, std: float, kind: str, margin: float, level: float = 0.95,
                   most: int = 1000) -> int | None:
    """An estimate: the fewest seeds whose t interval, at the observed mean and std, would lie wholly on one side
    of the margin (above / below) or inside +-margin (within); None where no number up to `most` would (the mean
    sits on the margin, or outside +-margin for within)."""
    if not (np.isfinite(mean) and np.isfinite(std)):
        return None
    room = margin - abs(mean) if kind == "within" else abs(mean - margin)
    if not room > 0:
        return None
    n = np.arange(2, most + 1)
    ok = stats.t.ppf((1 + level) / 2, n - 1) * std / np.sqrt(n) < room
    return int(n[ok][0]) if ok.any() else None


def seeds_needed_rates(k_a: int, n_a: int, k_b: int, n_b: int, alpha: float = 0.05, most: int = 200) -> int | None:
    """An estimate: the fewest seeds per setting at which the observed rates (kept, counts rounded) would give
    Fisher's one-sided p < alpha for "a lower than b"; None where a's rate is not below b's or no number up to
    `most` would."""
    if not (n_a and n_b) or not k_a / n_a < k_b / n_b:
        return None
    ra, rb = k_a / n_a, k_b / n_b
    for n in range(max(n_a, n_b), most + 1):
        if lower_rate_p(round(ra * n), n, round(rb * n), n) < alpha:
            return n
    return None
