"""Analysis results as Parquet rows under runs/<sweep>/analysis/<kind>/, keyed by checkpoint ids.

One file per (kind, checkpoints, parameters): re-running an analysis replaces its file
instead of adding duplicate rows, and the temp-file + os.replace write is atomic.
"""
from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from harness import confine
from harness.layout import RunDir
from harness.storage import atomic_write  # the one atomic temp-file + rename writer


def write(sweep: str | Path, kind: str, rows: pd.DataFrame | Sequence[dict[str, Any]], ckpts: Sequence[str],
          params: dict[str, Any] | None = None) -> Path:
    """Write rows with columns kind, ckpt_a, ckpt_b, ... (ids of the first 26 checkpoints), ckpts (all ids,
    comma-separated), the params, then the numbers."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    if not rows:
        raise ValueError(f"no {kind} rows to write")
    key = {"kind": kind, **{f"ckpt_{c}": i for c, i in zip(string.ascii_lowercase, ckpts)}, "ckpts": ",".join(ckpts),
           **(params or {})}
    df = pd.DataFrame([{**key, **r} for r in rows])
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return atomic_write(RunDir(sweep).analysis_part(kind, digest), lambda tmp: df.to_parquet(tmp, index=False))


def read(sweep: str | Path, kind: str) -> pd.DataFrame:
    """All rows of one analysis kind in a sweep."""
    parts = RunDir(sweep).analysis_parts(kind)
    if not parts:
        raise FileNotFoundError(f"{RunDir(sweep).analysis(kind)}: no {kind} results")
    return pd.concat([pd.read_parquet(confine.readable(p)) for p in parts], ignore_index=True)
