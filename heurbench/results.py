"""Every row under a results root as one typed DataFrame, each trial's resolved config flattened beside it.

    from heurbench import results
    df = results.load("runs", where={"data.batch_size": 5000, "kind": "eval", "split": "test"})

`sweep` picks sweep folders and `where` keys that are config columns (or trial_id) pick trials from
their config before any Parquet file is opened; `where` keys that are metrics fields (kind, split,
epoch, ...) filter rows inside the files that are read. Config columns have one type each: int, float, bool, text, or mixed where the
schema allows it (warmup.eta_init: a number or "catapult"); lists and mappings are JSON text. Each trial's
provenance (harness.provenance: versions, devices, host, SLURM and Ray ids, start and end) is in columns
provenance.<key>.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import pandas as pd

from harness import confine, lock, metrics, provenance
from harness.errors import ResultsError
from harness.grid import FINISHED, flatten
from harness.layout import PLAIN, RunDir
from harness.yamlfile import read_yaml

OWN = ("trial_id", "world_size", *metrics.FIELDS)  # metrics columns that no config value replaces
log = logging.getLogger("heurbench.results")


def runs(root: str | Path, sweep: str | Iterable[str] | None = None) -> list[RunDir]:
    """The sweep folders under `root` (or `root` itself when it is one), only those named when `sweep` is."""
    top = RunDir(root)
    if not top.path.is_dir():
        raise ResultsError(f"{top.path}: no such results folder")
    found = {top.name: top} if top.is_run() else {
        p.name: RunDir(p) for p in sorted(top.path.iterdir()) if p.is_dir() and RunDir(p).is_run()}
    if sweep is None:
        return list(found.values())
    names = [sweep] if isinstance(sweep, str) else list(sweep)
    missing = [n for n in names if n not in found]
    if missing:
        raise ResultsError(f"{top.path}: no sweep {', '.join(map(repr, missing))} (found: {', '.join(found) or 'none'})")
    return [found[n] for n in names]


def trial_columns(run: RunDir, trial_id: str) -> dict[str, Any]:
    """sweep, trial_id, state (status.json) and the resolved config (trials/<id>/config.json, else config.yaml)
    flattened; then the trial's tags that are not config values (a swept key names one: its typed value wins);
    then its provenance (status.json) as provenance.<key>."""
    trial = run.trial(trial_id)
    status = trial.read_status()
    row = {"sweep": run.name, "trial_id": trial_id, "state": status.get("state")}
    cfg = json.loads(confine.readable(trial.config_json).read_text()) if trial.config_json.is_file() else \
        read_yaml(trial.config) if trial.config.is_file() else None
    if cfg is not None:
        tags = cfg.pop("tags", None) or {}
        flat = flatten(cfg)
        row.update(flat)
        row.update({k: v for k, v in tags.items() if not configured(k, flat)})
    return {**row, **provenance.columns(status.get("provenance", {}))}


def configured(key: str, flat: Iterable[str]) -> bool:
    """Whether `key` is a config column or a section of them (a swept mapping such as 'warmup')."""
    return any(c == key or c.startswith(key + ".") for c in flat)


def typed(values: list) -> pd.Series:
    """One column: int (nullable when some are missing), float, bool, or objects (text; lists and mappings as
    JSON; numbers mixed with text kept as they are)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean" if len(present) < len(values) else bool)
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64" if len(present) < len(values) else "int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([float("nan") if v is None else float(v) for v in values], dtype="float64")
    return pd.Series([json.dumps(v) if isinstance(v, (list, dict)) else v for v in values], dtype=object)


def config_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Trial rows (`trial_columns`) as a DataFrame with one type per column."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    return pd.DataFrame({k: typed([r.get(k) for r in rows]) for k in names})


def allowed(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]


def files_of(run: RunDir, table: str, trials: list[str]) -> list[Path]:
    """The Parquet files of `table` in one sweep: 'metrics' (those of `trials`), an analysis kind, or
    'report/<name>'."""
    if table == "metrics":
        return [p for t in trials for _, p in sorted(run.metrics_parts(t).items())]
    kind, _, name = table.partition("/")
    if not all(PLAIN.fullmatch(n) and n not in (".", "..") for n in filter(None, (kind, name))):
        raise ResultsError(f"table {table!r}: expected 'metrics', an analysis kind or 'report/<name>' (plain names)")
    if name:
        return [run.report_table(name)] if kind == "report" and run.report_table(name).is_file() else []
    return run.analysis_parts(kind)


def read_rows(files: list[Path], where: dict[str, Any], drop: Callable[[str], bool] = lambda c: False) \
        -> pd.DataFrame:
    """Rows of `files` (one sweep's: one schema) that hold the `where` values, without the columns `drop` names."""
    import pyarrow.dataset as ds

    data = ds.dataset([str(confine.readable(f)) for f in files], format="parquet")
    names = data.schema.names
    unknown = [k for k in where if k not in names]
    if unknown:
        raise ResultsError(f"where: no column {', '.join(map(repr, unknown))} in {files[0].parent}")
    expr = None
    for k, v in where.items():
        expr = ds.field(k).isin(allowed(v)) if expr is None else expr & ds.field(k).isin(allowed(v))
    return data.to_table(columns=[n for n in names if not drop(n)], filter=expr).to_pandas()


def joined(rows: pd.DataFrame, cfg: pd.DataFrame) -> pd.DataFrame:
    """sweep, trial_id, the rows' own columns, then the trial's state and config."""
    cfg = cfg[[c for c in cfg.columns if c == "trial_id" or c not in rows.columns]]  # a tag named 'lr' is no lr
    out = rows.merge(cfg, on="trial_id", how="left", validate="many_to_one")
    return out[["sweep", "trial_id", *[c for c in out.columns if c not in ("sweep", "trial_id")]]]


def sweep_rows(run: RunDir, table: str, where: dict[str, Any], seen: set[str]) -> Optional[pd.DataFrame]:
    """One sweep's rows of `table`, or None; adds the column names it has to `seen`. Metrics: the trials `where`
    picks by config, then their files' rows (filtered by the `where` keys that are metrics fields) with the
    columns the config gives (sweep, seed, swept values) taken from the config instead."""
    if table != "metrics":
        files = files_of(run, table, [])
        rows = read_rows(files, where, drop=lambda c: c == "sweep") if files else None
        seen.update(where)
        if rows is None or "trial_id" not in rows:
            return rows if rows is None else rows.assign(sweep=run.name)[["sweep", *rows.columns]]
        return joined(rows, config_table([trial_columns(run, t) for t in sorted(set(rows.trial_id))]))
    hidden = [t for t in run.metrics_staged_trials() if not run.metrics_of(t).exists()]
    if hidden:
        log.warning("%s: trial(s) %s were killed mid-compaction; their rows show again after `heurbench results "
                    "compact %s`", run.path, ", ".join(hidden), run.path)
    trials = [t for t in run.metrics_trials() if "trial_id" not in where or t in allowed(where["trial_id"])]
    seen.update(OWN)
    if not trials:
        return None
    cfg = config_table([trial_columns(run, t) for t in trials])
    seen.update(cfg.columns)
    if any(k not in cfg.columns and k not in OWN for k in where):  # a key this sweep's trials do not have
        return None
    for k in [k for k in where if k not in OWN]:
        cfg = cfg[cfg[k].isin(allowed(where[k]))]
    files = files_of(run, table, list(cfg.trial_id))
    if not files:
        return None
    rows = read_rows(files, {k: v for k, v in where.items() if k in OWN[1:]},
                     drop=lambda c: c not in OWN and configured(c, cfg.columns))
    return joined(rows, cfg)


def load(root: str | Path, sweep: str | Iterable[str] | None = None, where: Optional[dict[str, Any]] = None,
         table: str = "metrics") -> pd.DataFrame:
    """Rows of `table` ('metrics', an analysis kind such as 'cca', or 'report/<name>') in every sweep under
    `root` (or those `sweep` names) whose columns hold the `where` values (a value, or a list of them), with
    each trial's state and flattened config joined on trial_id."""
    where, seen = dict(where or {}), set()
    frames = [f for f in (sweep_rows(run, table, where, seen) for run in runs(root, sweep)) if f is not None]
    unknown = [k for k in where if k not in seen]
    if not frames and unknown and table == "metrics":
        raise ResultsError(f"where: no sweep under {root} has a column {', '.join(map(repr, unknown))}")
    if not frames:
        raise ResultsError(f"{root}: no {table} rows" + (f" where {where}" if where else ""))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def compact(root: str | Path, sweep: str | Iterable[str] | None = None) -> int:
    """Compact the metrics parts of every ended trial under `root` (harness.metrics.compact), each under its
    trial lock; returns how many trials were merged. Safe to rerun, and to kill."""
    merged = 0
    for run in runs(root, sweep):
        for t in run.trial_ids():
            if run.trial(t).read_status().get("state") in FINISHED:
                with lock.hold(run.trial(t).lock, f"trial {t} ({run.trial(t).path})", hint="it is being trained"):
                    merged += metrics.compact(run, t)
    return merged


def cmd_results(args) -> int:
    print(f"compacted the metrics parts of {compact(args.root, args.sweep)} ended trials under {args.root}")
    return 0


def add_parser(sub, help: str) -> None:
    p = sub.add_parser("results", help=help)
    p.add_argument("action", choices=["compact"])
    p.add_argument("root", help="a results root or one sweep's folder")
    p.add_argument("--sweep", action="append", help="only this sweep (repeatable)")
    p.set_defaults(func=cmd_results)
