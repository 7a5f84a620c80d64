"""Benchmark-style analyses of any sweep: time to a target accuracy (AlgoPerf's time-to-result), sensitivity
to a swept value and the best setting per method (DeepOBS's analyser).

Each function takes a metrics DataFrame (harness/metrics.py FIELDS after the base columns sweep, trial_id,
the swept values such as `optim.lr` or `tags.run`, seed, world_size) and returns a DataFrame. Aggregates over
seeds give the mean and the 95% t interval of analysis.claims.interval (lo, hi NaN with fewer than 2 values;
an accuracy's clipped to [0, 1]).
"""
from __future__ import annotations

import math

from typing import Sequence

import pandas as pd

from analysis import plots
from analysis.claims import interval
from harness.errors import ResultsError
from harness.metrics import FIELDS

NOT_SWEPT = ("sweep", "trial_id", "world_size")
TIMES = ("iteration", "epoch", "wall_time")


def swept(metrics: pd.DataFrame) -> list[str]:
    """The columns that hold a trial's swept values, seed included."""
    return [c for c in metrics.columns if c not in FIELDS and c not in NOT_SWEPT]


def evals(metrics: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """The `split` evaluation rows, by trial then iteration."""
    ev = metrics[(metrics.kind == "eval") & (metrics.split == split)]
    if ev.empty:
        raise ResultsError(f"no {split} evaluation rows in these metrics")
    return ev.sort_values(["trial_id", "iteration"], kind="stable")


def per_trial(metrics: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per trial: trial_id, its swept values, the last and the best `split` accuracy (final_accuracy,
    best_accuracy) and the epoch and iteration of its last evaluation."""
    ev = evals(metrics, split)
    last = ev.drop_duplicates("trial_id", keep="last").set_index("trial_id")
    out = last[swept(metrics)].assign(final_accuracy=last.accuracy, best_accuracy=ev.groupby("trial_id").accuracy.max(),
                                      epochs=last.epoch, iterations=last.iteration)
    return out.reset_index()


def final_test_accuracy(metrics: pd.DataFrame) -> pd.Series:
    """Each trial's last test accuracy, indexed by trial_id (empty when no trial evaluated on test)."""
    if not (metrics.split == "test").any():
        return pd.Series(dtype=float)
    return per_trial(metrics, "test").set_index("trial_id").final_accuracy


def over_seeds(trials: pd.DataFrame, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Per combination of the `by` columns: trials (how many rows, i.e. seeds) and, for each of `values`, the
    mean over its finite values and their 95% t interval (<value>_mean, _lo, _hi), clipped to what the value can
    be (an accuracy in [0, 1], a time at or above 0)."""
    rows = []
    for key, part in trials.groupby(list(by), sort=True, dropna=False) if by else [((), trials)]:
        row = {**dict(zip(by, key)), "trials": len(part)}
        for v in values:
            bounds = (0.0, 1.0) if v.endswith("accuracy") else (0.0, math.inf) if v in TIMES else None
            stats = interval(part[v], bounds=bounds)
            row.update({f"{v}_mean": stats["mean"], f"{v}_lo": stats["lo"], f"{v}_hi": stats["hi"]})
        rows.append(row)
    return pd.DataFrame(rows)


def time_to_target(metrics: pd.DataFrame, target: float, by: Sequence[str] | None = None,
                   split: str = "test") -> pd.DataFrame:
    """Iteration, epoch and wall time (the row's seconds since the trial started) of each trial's first `split`
    evaluation with accuracy >= `target`, NaN when it never got there (column reached). With `by`, aggregated
    over the trials (seeds) of each `by` combination: trials, reached (how many got there) and the mean and
    interval of each time over the trials that got there."""
    ev = evals(metrics, split)
    trials = ev.drop_duplicates("trial_id").set_index("trial_id")[swept(metrics)]
    first = ev[ev.accuracy >= target].drop_duplicates("trial_id").set_index("trial_id")
    out = trials.join(first[list(TIMES)]).reset_index()
    out["reached"] = out.iteration.notna()
    if by is None:
        return out
    agg = over_seeds(out, by, TIMES)
    reached = out.groupby(list(by), sort=True, dropna=False).reached.sum().to_numpy() if by else [out.reached.sum()]
    agg.insert(len(by) + 1, "reached", reached)
    return agg


def sensitivity(metrics: pd.DataFrame, value: str, method: Sequence[str] = (), split: str = "test") -> pd.DataFrame:
    """Final and best `split` accuracy against the swept `value`, per method (combination of the `method`
    columns): mean and interval over seeds (see `over_seeds`)."""
    return over_seeds(per_trial(metrics, split), [*method, value], ["final_accuracy", "best_accuracy"])


def best_setting(metrics: pd.DataFrame, settings: Sequence[str], method: Sequence[str] = (), by: str = "final",
                 split: str = "test") -> pd.DataFrame:
    """Per method, the setting (combination of the `settings` columns) with the highest mean `by` (final or
    best) accuracy over seeds, with its `sensitivity` statistics and how many settings were compared (the
    first in sorted order wins a tie)."""
    if by not in ("final", "best"):
        raise ValueError(f"by={by!r}: expected 'final' or 'best'")
    table = over_seeds(per_trial(metrics, split), [*method, *settings], ["final_accuracy", "best_accuracy"])
    score = f"{by}_accuracy_mean"
    groups = table.groupby(list(method), sort=True, dropna=False) if method else [((), table)]
    rows = [part.loc[part[score].idxmax()].to_dict() | {"settings": len(part)} for _, part in groups
            if part[score].notna().any()]
    return pd.DataFrame(rows, columns=[*table.columns, "settings"])


def sensitivity_figure(metrics: pd.DataFrame, value: str, method: Sequence[str], path, title: str = "",
                       split: str = "test"):
    """Final `split` accuracy against `value`, one line per method: the mean over seeds with its 95% band."""
    trials = per_trial(metrics, split).sort_values(value)
    return plots.lines(trials, value, "final_accuracy", path, by=list(method), over="seed", title=title)


def sections(r, target: float | None = None, split: str = "test") -> None:
    """The benchmark sections of any sweep's report `r` (analysis.report.Report), over its finished trials:
    best setting per method, sensitivity to each numeric swept value (a figure each), time to `target`
    (default: 0.9 x the best `split` accuracy of any finished trial). A method is a combination of the
    non-numeric swept columns (e.g. tags.run); a setting one of the numeric ones (e.g. optim.lr) that varies
    within a method."""
    done = [t for t in r.metrics.trial_id.unique() if r.state(t) == "done"]
    m = r.metrics[r.metrics.trial_id.isin(done) & (r.metrics.split == split)]
    left = r.metrics.trial_id.nunique() - len(done)
    r.say("## Benchmark", "", f"Over the {len(done)} finished trials" + (f" ({left} diverged or unfinished left out)"
          if left else "") + f"; {split} accuracy; mean over seeds [95% t interval].", "")
    if not (m.kind == "eval").any():
        r.say(f"No {split} evaluations of finished trials: no benchmark tables.", "")
        return
    cols = [c for c in swept(m) if c != "seed" and m[c].nunique(dropna=False) > 1]
    numeric = [c for c in cols if pd.api.types.is_numeric_dtype(m[c]) and not pd.api.types.is_bool_dtype(m[c])]
    method = [c for c in cols if c not in numeric]
    within = m.groupby(method, dropna=False) if method else None
    settings = [c for c in numeric if within is None or within[c].nunique(dropna=False).gt(1).any()]
    method += [c for c in numeric if c not in settings]  # fixed by the method (e.g. its batch size): part of it
    for by in ("final", "best") if settings else ("final",):  # without settings, one row per method: one table
        best = r.table(f"best_setting_{by}", best_setting(m, settings, method, by, split))
        r.say(f"### Best setting per method, by mean {by} accuracy" if settings else "### Accuracy per method", "",
              _shown(best, [*method, *settings]), "")
    for value in settings:
        others = [c for c in cols if c != value]
        table = r.table(f"sensitivity_{value}", sensitivity(m, value, others, split))
        sensitivity_figure(m, value, others, r.figure(f"sensitivity_{value}"),
                           f"{r.name}: final {split} accuracy vs {value}", split)
        r.say(f"### Sensitivity to {value}", "", _shown(table, [*others, value]), "")
    if target is None:
        target = round(0.9 * per_trial(m, split).best_accuracy.max(), 3)
    ttt = r.table("time_to_target", time_to_target(m, target, cols, split))
    r.say(f"### Time to {split} accuracy {target:g}", "", "Mean over the seeds that reached it.", "",
          _shown(ttt, cols, TIMES, ".4g", ["reached"]), "")


def _shown(table: pd.DataFrame, keys: Sequence[str], values: Sequence[str] = ("final_accuracy", "best_accuracy"),
           fmt: str = ".4f", extra: Sequence[str] = ()) -> str:
    """Markdown of `over_seeds` output: keys, trials, extra columns, then each value as `mean [lo, hi]`."""
    def cell(row, v):
        mean, lo, hi = row[f"{v}_mean"], row[f"{v}_lo"], row[f"{v}_hi"]
        return "never" if pd.isna(mean) else f"{mean:{fmt}}" + ("" if pd.isna(lo) else f" [{lo:{fmt}}, {hi:{fmt}}]")

    shown = table[[*keys, "trials", *extra]].copy()
    for v in values:
        shown[v] = [cell(row, v) for _, row in table.iterrows()]
    return shown.to_markdown(index=False)
