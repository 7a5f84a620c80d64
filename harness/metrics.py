"""Metrics rows: their schema, the one function that builds a row, and the Parquet parts they go to.

Every row a trial writes is `base` (sweep, trial_id, swept values as typed columns, seed,
world_size) followed by `row(...)`'s fields, in the order of `FIELDS`. Part n of a trial
(metrics/<trial_id>/part-<n>.parquet) holds the rows since part n-1; the rolling checkpoint
records how many parts it has seen, so a resumed run drops any later part and regenerates it:
no row is duplicated or lost.

A finished trial's parts are compacted into one part that records how many rows each part
gave (`part_rows`), so a resume can still cut it at any part. The merged part is staged in a
hidden folder that then replaces the trial's folder by two renames: a reader sees the parts or the
merged part, never both (between the two renames, neither), and `settle` completes or undoes a
compaction that was killed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from harness import confine
from harness.errors import ResultsError
from harness.layout import RunDir
from harness.storage import atomic_write, write_parquet, write_text

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


PART_ROWS = b"heurbench.part_rows"  # a merged part's metadata: the row count of each part it holds, in order


def part_rows(path: Path) -> list[int]:
    """Row counts of the parts a file holds: [rows] for a part as written, one per part for a merged one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    confine.readable(path)
    try:
        meta = pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ResultsError(f"{path}: an unreadable metrics part ({' '.join(str(err).split())}); move it aside "
                           f"and rerun, or re-run its trial") from None
    kv = meta.metadata or {}
    return json.loads(kv[PART_ROWS]) if PART_ROWS in kv else [meta.num_rows]


def write_merged(path: Path, table, counts: list[int]) -> Path:
    """`table` (rows of consecutive parts) as one part recording each part's row count."""
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PART_ROWS: json.dumps(counts)})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def settle(run: RunDir, trial_id: str) -> None:
    """Finish or undo an interrupted compaction of the trial, and move parts of the earlier flat layout
    (metrics/part-<trial_id>-<n>.parquet) into its folder. Each step is a rename, so this is safe to rerun."""
    live, staged = run.metrics_of(trial_id), run.metrics_staged(trial_id)
    for folder in (live, staged, run.metrics_retired(trial_id)):
        confine.writable(folder)  # renamed or removed below: never a planted link
    if staged.is_dir() and not live.exists():  # killed between the two renames: the staged part is complete
        os.rename(staged, live)
    shutil.rmtree(staged, ignore_errors=True)  # killed while staging: the trial's folder still holds every row
    shutil.rmtree(run.metrics_retired(trial_id), ignore_errors=True)  # killed before removing the old parts
    for n, p in run.legacy_metrics_parts(trial_id).items():
        live.mkdir(parents=True, exist_ok=True)
        os.replace(p, run.metrics_part(trial_id, n))


def compact(run: RunDir, trial_id: str) -> bool:
    """Merge an ended trial's parts into one and write its config.yaml as config.json (which heurbench.results
    reads); returns whether there were parts to merge. Killed at any point, readers see each row once (or,
    between two renames, not yet) and rerunning completes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from harness.yamlfile import read_yaml

    trial = run.trial(trial_id)
    settle(run, trial_id)
    parts = run.metrics_parts(trial_id)
    first = sorted(parts)
    counts = [c for n in first for c in part_rows(parts[n])]  # every part readable, or one line naming it
    if trial.config.is_file() and not trial.config_json.is_file():
        write_text(trial.config_json, json.dumps(read_yaml(trial.config)))
    if len(parts) < 2:
        return False
    table = pa.concat_tables([pq.read_table(parts[n]) for n in first], promote_options="default")  # resumed on
    # a later heurbench that writes a new column: earlier rows hold nulls
    write_merged(run.metrics_staged(trial_id) / run.metrics_part(trial_id, first[0]).name, table, counts)
    os.rename(run.metrics_of(trial_id), run.metrics_retired(trial_id))
    os.rename(run.metrics_staged(trial_id), run.metrics_of(trial_id))
    shutil.rmtree(run.metrics_retired(trial_id))
    return True


class MetricsWriter:
    """Buffers a trial's rows and writes them as numbered parts under <run>/metrics/<trial_id>/."""

    def __init__(self, run: RunDir, trial_id: str, base: dict, parts: int = 0, enabled: bool = True):
        self.run, self.trial_id, self.base, self.parts, self.enabled = run, trial_id, base, parts, enabled
        self.rows: list[dict] = []
        if enabled:
            settle(run, trial_id)
            self.drop_parts_from(parts)

    def drop_parts_from(self, n: int) -> None:
        """Delete parts n, n+1, ... (written after the checkpoint we resume from); a merged part that holds
        some of them is cut back to the parts before n."""
        import pyarrow.parquet as pq

        parts = self.run.metrics_parts(self.trial_id)
        for i, p in parts.items():
            if i >= n:
                p.unlink()
        below = [i for i in parts if i < n]
        if below:
            last = parts[max(below)]
            counts = part_rows(last)
            keep = n - max(below)
            if len(counts) > keep:
                write_merged(last, pq.read_table(last).slice(0, sum(counts[:keep])), counts[:keep])

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
