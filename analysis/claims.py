"""A paper's claims as checks: the statistic that decides each one, over seeds, with a 95% t interval.

A study declares its claims in code (its module's CLAIMS) before any run. Each claim reads columns of a
per-seed frame (one row per seed, one column per quantity the study measured in that seed, e.g. a setting's
final test accuracy) and turns them into one number per seed; comparisons of two settings are therefore
paired by seed. Over the seeds where the statistic is finite: mean, sample standard deviation and the 95%
Student t interval mean +- t_{0.975, n-1} s / sqrt(n) (NaN with fewer than 2 seeds).

Decision rules (`Rule`), all on the 95% interval [lo, hi], never on the mean alone:
- above m  (the paper says the statistic exceeds m): held if lo > m, not held if hi < m, else inconclusive.
- below m  (the statistic is under m): held if hi < m, not held if lo > m, else inconclusive.
- within m (two settings are comparable, |statistic| <= m): held if the interval lies inside [-m, m], not held
  if it lies wholly outside it (lo > m or hi < -m), else inconclusive. A 95% interval inside the margin is a
  stricter equivalence test than the usual TOST at 5% (which uses the 90% interval).
With fewer than 2 finite seeds the interval is NaN and the verdict inconclusive; a claim whose columns the
sweep did not produce is inconclusive with a note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
KINDS = ("above", "below", "within")


def t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df >= 1, by the finite series of Abramowitz & Stegun 26.7.3-4
    (theta = atan(t / sqrt(df))): odd df (2/pi)(theta + sin cos (1 + 2/3 cos^2 + 2.4/(3.5) cos^4 + ...)),
    even df sin (1 + 1/2 cos^2 + 1.3/(2.4) cos^4 + ...), with (df - 1) / 2 terms (odd; none for df = 1) or df / 2
    terms (even)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    term, total = 1.0, 1.0
    if df % 2:
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """t_{p, df} for p in (0.5, 1): the t with P(T < t) = p, by bisection on `t_cdf_two_sided` (to 1e-10)."""
    target = 2 * p - 1
    lo, hi = 0.0, 1.0
    while t_cdf_two_sided(hi, df) < target:
        hi *= 2
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf_two_sided(mid, df) < target else (lo, mid)
    return (lo + hi) / 2


def interval(values, level: float = 0.95) -> dict:
    """Mean, sample std, number of finite values n and the two-sided t interval (lo, hi) at `level`;
    std, lo and hi are NaN with n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "std": float("nan"), "lo": float("nan"), "hi": float("nan")}
    std = float(x.std(ddof=1))
    half = t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


@dataclass(frozen=True)
class Rule:
    """How the 95% interval decides: kind `above`, `below` or `within` the margin (see the module docstring)."""
    kind: str
    margin: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown rule {self.kind!r}; expected one of {KINDS}")
        if self.kind == "within" and not self.margin > 0:
            raise ValueError("a `within` rule needs a positive margin")

    def verdict(self, lo: float, hi: float) -> str:
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return INCONCLUSIVE
        m = self.margin
        held, not_held = {"above": (lo > m, hi < m), "below": (hi < m, lo > m),
                          "within": (-m <= lo and hi <= m, lo > m or hi < -m)}[self.kind]
        return HELD if held else NOT_HELD if not_held else INCONCLUSIVE

    def __str__(self) -> str:
        return f"within +-{self.margin:g}" if self.kind == "within" else f"{self.kind} {self.margin:g}"  # no "|":
        # the rule is a markdown table cell


def above(margin: float = 0.0) -> Rule:
    return Rule("above", margin)


def below(margin: float = 0.0) -> Rule:
    return Rule("below", margin)


def within(margin: float) -> Rule:
    return Rule("within", margin)


@dataclass(frozen=True)
class Claim:
    """One claim of a paper: `statement` (the paper's words, where it says them), the `statistic` in words,
    the per-seed frame `columns` it reads, `value` (their per-seed values -> the statistic per seed; the
    default is the first column minus the second, or the one column) and the decision `rule`."""
    study: str
    id: str
    statement: str
    statistic: str
    columns: tuple[str, ...]
    rule: Rule
    value: Callable[..., pd.Series] | None = None

    def per_seed(self, frame: pd.DataFrame) -> pd.Series:
        cols = [frame[c].astype(float) for c in self.columns]
        if self.value is not None:
            return self.value(*cols)
        return cols[0] - cols[1] if len(cols) == 2 else cols[0]


def judge(claim: Claim, frame: pd.DataFrame) -> dict:
    """The claims-table row of `claim` on a per-seed frame (index: seed)."""
    missing = [c for c in claim.columns if c not in frame]
    values = pd.Series(dtype=float) if missing else claim.per_seed(frame)
    stats = interval(values)
    verdict = Rule.verdict(claim.rule, stats["lo"], stats["hi"])
    note = (f"nothing in this sweep gives: {', '.join(missing)}" if missing else
            f"{stats['n']} seed(s) with a value; an interval needs 2" if stats["n"] < 2 else "")
    return {"study": claim.study, "claim": claim.id, "statement": claim.statement, "statistic": claim.statistic,
            "rule": str(claim.rule), "seeds": stats["n"], "mean": stats["mean"], "ci_lo": stats["lo"],
            "ci_hi": stats["hi"], "verdict": verdict, "note": note,
            "per_seed": ", ".join(f"{s}: {v:.4g}" for s, v in values.dropna().items())}


def table(claims: list[Claim], frame: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (see `judge`)."""
    return pd.DataFrame([judge(c, frame) for c in claims])
