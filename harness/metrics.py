"""Metrics rows: their schema, the one function that builds a row, and the Parquet parts they go to.

Every row a trial writes is `base` (sweep, trial_id, swept values as typed columns, seed,
world_size) followed by `row(...)`'s fields, in the order of `FIELDS`. Part n of a trial
holds the rows since part n-1; the rolling checkpoint records how many parts it has seen,
so a resumed run drops any later part and regenerates it: no row is duplicated or lost.
"""
from __future__ import annotations

import json
import math

from harness.layout import RunDir
from harness.storage import write_parquet

NAN = math.nan
# the measured fields of every row, after the trial's base columns (sweep, trial_id, tags, seed, world_size)
FIELDS = ("kind", "split", "epoch", "iteration", "lr", "loss", "accuracy", "grad_norm", "weight_norm", "wall_time",
          "images_per_s")


def row(kind: str, split: str, *, epoch: float, iteration: int, lr: float, loss: float, weight_norm: float,
        wall_time: float, images_per_s: float, accuracy: float = NAN, grad_norm: float = NAN) -> dict:
    """One metrics row: kind step|eval, split train|val|test; images_per_s covers the iterations since the
    previous row."""
    return dict(kind=kind, split=split, epoch=float(epoch), iteration=int(iteration), lr=float(lr), loss=float(loss),
                accuracy=float(accuracy), grad_norm=float(grad_norm), weight_norm=float(weight_norm),
                wall_time=float(wall_time), images_per_s=float(images_per_s))


def tag_columns(values: list[dict[str, object]]) -> list[dict[str, object]]:
    """Swept values (or a single trial's tags, as one row) as metrics columns, one type per column.

    Parquet parts of one sweep must share a schema: a column whose values are all numbers
    (or missing) becomes float with NaN for missing, all booleans stays bool, anything else
    becomes text (lists and mappings as JSON, missing as "none").
    """
    def text(v):
        return v if isinstance(v, str) else "none" if v is None else json.dumps(v, sort_keys=True)

    out = [dict() for _ in values]
    for k in dict.fromkeys(k for v in values for k in v):
        col = [v.get(k) for v in values]
        present = [c for c in col if c is not None]
        if present and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in present):
            conv = lambda c: float("nan") if c is None else float(c)
        elif present and len(present) == len(col) and all(isinstance(c, bool) for c in present):
            conv = bool
        else:
            conv = text
        for o, c in zip(out, col):
            o[k] = conv(c)
    return out


class MetricsWriter:
    """Buffers a trial's rows and writes them as numbered parts under <run>/metrics/."""

    def __init__(self, run: RunDir, trial_id: str, base: dict, parts: int = 0, enabled: bool = True):
        self.run, self.trial_id, self.base, self.parts, self.enabled = run, trial_id, base, parts, enabled
        self.rows: list[dict] = []
        if enabled:
            self.drop_parts_from(parts)

    def drop_parts_from(self, n: int) -> None:
        """Delete parts n, n+1, ... (written after the checkpoint we resume from)."""
        for i, p in self.run.metrics_parts(self.trial_id).items():
            if i >= n:
                p.unlink()

    def add(self, r: dict) -> None:
        """Buffer `r` (built by `row`) after the trial's base columns."""
        if self.enabled:
            self.rows.append({**self.base, **r})

    def flush(self) -> int:
        """Write buffered rows as the next part; returns the number of parts written so far."""
        if self.enabled and self.rows:
            write_parquet(self.run.metrics_part(self.trial_id, self.parts), self.rows)
            self.parts += 1
            self.rows = []
        return self.parts
