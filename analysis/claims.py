"""A paper's claims as checks: the statistic that decides each one, over seeds, with a 95% t interval.

A study declares its claims in code (its module's CLAIMS) before any run. Each claim reads columns of a
per-seed frame (one row per seed, one column per quantity the study measured in that seed, e.g. a setting's
final test accuracy) and turns them into one number per seed; comparisons of two settings are therefore
paired by seed. Over the seeds where the statistic is finite: mean, sample standard deviation and the 95%
interval of the mean by the claim's method (analysis.stats, from scipy.stats; Student t by default), kept inside
the range the statistic can take (NaN with fewer than 2 seeds). A RateClaim compares the rates of a per-seed 0/1
outcome (`unstable`) with exact intervals and an exact test instead.

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

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from analysis import stats

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
NOT_JUDGED = "not judged"  # a study's declared precondition failed (frame.attrs[REFUSED]: claim id -> why)
REFUSED = "refused"
KINDS = ("above", "below", "within")
CHANCE_MARGIN = 0.1  # `unstable`: final accuracy at most chance + 0.1 (10 classes: <= 0.2)


def interval(values, level: float = 0.95, method: str = "t", bounds=None) -> dict:
    """Mean, sample std, number of finite values n and the two-sided interval (lo, hi) of the mean at `level`
    by `method` (analysis.stats: "t", "bca" or "logit-t"), inside `bounds` (lo, hi) where given; std, lo and hi
    are NaN with n < 2."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "std": float("nan"), "lo": float("nan"), "hi": float("nan")}
    lo, hi = stats.mean_interval(x, method, level, bounds)
    return {"n": n, "mean": mean, "std": float(x.std(ddof=1)), "lo": lo, "hi": hi}


def unstable(state: str, final_accuracy: float, chance: float, margin: float = CHANCE_MARGIN) -> float:
    """The per-seed outcome `unstable`, declared before any run: the trial diverged, or it finished with final
    accuracy within `margin` of chance (<= chance + margin); NaN for a trial that is neither done nor diverged."""
    if state == "diverged":
        return 1.0
    if state != "done" or not np.isfinite(final_accuracy):
        return float("nan")
    return float(final_accuracy <= chance + margin)


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


# the range of an accuracy (and of an error barrier: a path's error above its worse end), and of a difference
# of two accuracies
ACCURACY, DIFFERENCE = (0.0, 1.0), (-1.0, 1.0)


@dataclass(frozen=True)
class Claim:
    """One claim of a paper: `statement` (the paper's words, where it says them), the `statistic` in words,
    the per-seed frame `columns` it reads, `value` (their per-seed values -> the statistic per seed; the
    default is the first column minus the second, or the one column) and the decision `rule`. `bounds`: the
    range the statistic can take (ACCURACY, DIFFERENCE, or None for unbounded), which the interval stays inside;
    `method`: the interval (analysis.stats.METHODS; t by default, the one the coverage simulation in
    tests/test_stats.py finds nearest 95% at 3-10 seeds)."""
    study: str
    id: str
    statement: str
    statistic: str
    columns: tuple[str, ...]
    rule: Rule
    value: Callable[..., pd.Series] | None = None
    bounds: tuple[float, float] | None = None
    method: str = "t"

    def per_seed(self, frame: pd.DataFrame) -> pd.Series:
        cols = [frame[c].astype(float) for c in self.columns]
        if self.value is not None:
            return self.value(*cols)
        return cols[0] - cols[1] if len(cols) == 2 else cols[0]

    def method_name(self) -> str:
        lo, hi = self.bounds or (None, None)
        return f"{self.method} 95%" + (f", clipped to [{lo:g}, {hi:g}]" if self.bounds and self.method != "logit-t"
                                       else "")


@dataclass(frozen=True)
class RateClaim:
    """A claim that setting a's rate of a per-seed 0/1 outcome (e.g. `unstable`) is lower than setting b's:
    `columns` (a, b) of the per-seed frame hold the outcome (1, 0, NaN for no outcome). Each setting's rate comes
    with its exact Clopper-Pearson interval; the verdict is Fisher's exact one-sided test at `alpha`: held if
    p(a lower) < alpha, not held if p(b lower) < alpha, else inconclusive. The row's mean is rate a - rate b."""
    study: str
    id: str
    statement: str
    statistic: str
    columns: tuple[str, str]
    alpha: float = 0.05
    method = "Clopper-Pearson 95% per setting; Fisher exact, one-sided"

    def method_name(self) -> str:
        return self.method


def _note(missing, n) -> str:
    return (f"nothing in this sweep gives: {', '.join(missing)}" if missing else
            f"{n} seed(s) with a value; an interval needs 2" if n < 2 else "")


@dataclass(frozen=True)
class Evidence:
    """What decides a claim on a per-seed frame, one group per interval (a Claim: its statistic; a RateClaim: each
    setting's outcome): its label, per-seed `values` (NaN dropped), n, mean (a rate claim: the rate k / n; a Claim
    also has std) and 95% interval lo, hi. `lines`: the rule's thresholds (none for a rate claim); `missing`: the
    columns the frame lacks."""
    groups: tuple[dict, ...]
    lines: tuple[float, ...]
    missing: tuple[str, ...]


def evidence(claim: Claim | RateClaim, frame: pd.DataFrame) -> Evidence:
    """The per-seed values and intervals that `judge` decides `claim` on."""
    missing = tuple(c for c in claim.columns if c not in frame)
    if isinstance(claim, RateClaim):
        groups = []
        for c in claim.columns:
            x = pd.Series(dtype=float) if missing else frame[c].astype(float).dropna()
            k, n = int(x.sum()), len(x)
            lo, hi = stats.clopper_pearson(k, n)
            groups.append({"label": c, "values": x, "k": k, "n": n, "mean": k / n if n else float("nan"),
                           "lo": lo, "hi": hi})
        return Evidence(tuple(groups), (), missing)
    values = pd.Series(dtype=float) if missing else claim.per_seed(frame).dropna()
    label = " - ".join(claim.columns) if claim.value is None else claim.id
    s, m = interval(values, method=claim.method, bounds=claim.bounds), claim.rule.margin
    lines = (-m, m) if claim.rule.kind == "within" else (m,)
    return Evidence(({"label": label, "values": values, **s},), lines, missing)


def judge_rate(claim: RateClaim, frame: pd.DataFrame) -> dict:
    """The claims-table row of a RateClaim on a per-seed frame."""
    ev = evidence(claim, frame)
    a, b = ev.groups
    ka, na, kb, nb = a["k"], a["n"], b["k"], b["n"]
    p_lower = stats.lower_rate_p(ka, na, kb, nb) if na and nb else float("nan")
    p_higher = stats.lower_rate_p(kb, nb, ka, na) if na and nb else float("nan")
    verdict = HELD if p_lower < claim.alpha else NOT_HELD if p_higher < claim.alpha else INCONCLUSIVE
    needed = stats.seeds_needed_rates(ka, na, kb, nb, claim.alpha) if verdict == INCONCLUSIVE and na and nb else None
    note = _note(ev.missing, min(na, nb)) if ev.missing or not (na and nb) else (
        f"{a['label']} {ka}/{na} [{a['lo']:.3g}, {a['hi']:.3g}], {b['label']} {kb}/{nb} [{b['lo']:.3g}, "
        f"{b['hi']:.3g}]; p = {p_lower:.3g}")
    if verdict == INCONCLUSIVE and na and nb:
        note += (f"; estimate: ~{needed} seeds per setting at these rates would decide it" if needed else
                 "; no number of seeds decides it at these rates")
    return {"study": claim.study, "claim": claim.id, "statement": claim.statement, "statistic": claim.statistic,
            "rule": f"rate lower (p < {claim.alpha:g})", "method": claim.method_name(), "seeds": min(na, nb),
            "mean": a["mean"] - b["mean"], "ci_lo": float("nan"), "ci_hi": float("nan"), "p_value": p_lower,
            "interval": f"a [{a['lo']:.3g}, {a['hi']:.3g}], b [{b['lo']:.3g}, {b['hi']:.3g}]", "seeds_needed": needed,
            "verdict": verdict, "note": note,
            "per_seed": "; ".join(f"{g['label']}: " + ", ".join(f"{s}: {v:g}" for s, v in g["values"].items())
                                  for g in ev.groups)}


def judge(claim: Claim | RateClaim, frame: pd.DataFrame) -> dict:
    """The claims-table row of `claim` on a per-seed frame (index: seed). An inconclusive claim's note says how
    many seeds its interval would need at the spread observed (an estimate, analysis.stats.seeds_needed_t)."""
    if isinstance(claim, RateClaim):
        return judge_rate(claim, frame)
    ev = evidence(claim, frame)
    s = ev.groups[0]
    verdict = claim.rule.verdict(s["lo"], s["hi"])
    note = _note(ev.missing, s["n"])
    needed = None
    if verdict == INCONCLUSIVE and not ev.missing and s["n"] >= 2:
        needed = stats.seeds_needed_t(s["mean"], s["std"], claim.rule.kind, claim.rule.margin)
        note = (f"estimate: ~{needed} seeds at this mean and spread would clear the margin" if needed else
                "estimate: no number of seeds clears the margin at this mean")
    return {"study": claim.study, "claim": claim.id, "statement": claim.statement, "statistic": claim.statistic,
            "rule": str(claim.rule), "method": claim.method_name(), "seeds": s["n"], "mean": s["mean"],
            "ci_lo": s["lo"], "ci_hi": s["hi"], "p_value": float("nan"), "interval": f"[{s['lo']:.4g}, {s['hi']:.4g}]",
            "seeds_needed": needed, "verdict": verdict, "note": note,
            "per_seed": ", ".join(f"{k}: {v:.4g}" for k, v in s["values"].items())}


def table(claims: list, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (see `judge`); a claim the study refused (`frame.attrs[REFUSED]`, claim id -> the one-line
    reason, a rule its module declared) keeps its interval but is "not judged", the reason as its note."""
    refused = frame.attrs.get(REFUSED, {})
    return pd.DataFrame([{**judge(c, frame), "verdict": NOT_JUDGED, "note": refused[c.id]} if c.id in refused
                         else judge(c, frame) for c in claims])


COLUMNS = ("claim", "verdict", "mean", "interval", "rule", "seeds", "method", "statistic", "note")


def markdown(rows) -> str:
    """The claims table as markdown (report, report.html and quickstart print it): the COLUMNS that `rows` (a
    `table` frame or its row dicts) have, in that order, verdict right after claim."""
    df = pd.DataFrame(rows)
    absent = [c for c in ("claim", "verdict") if c not in df]
    if absent:
        raise ValueError(f"claims table: no {absent[0]!r} column (it has {list(df.columns)})")
    return df[[c for c in COLUMNS if c in df]].to_markdown(index=False, floatfmt=".4g")
