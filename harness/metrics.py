"""Metrics rows -> Parquet parts, one file per flush, written atomically.

Part n of a trial holds the rows since part n-1; the rolling checkpoint records how many
parts it has seen, so a resumed run drops any later part and regenerates it: no row is
duplicated or lost.
"""
from __future__ import annotations

from pathlib import Path

from harness.storage import write_parquet


def part_path(metrics_dir: Path, trial_id: str, n: int) -> Path:
    return metrics_dir / f"part-{trial_id}-{n:05d}.parquet"


class MetricsWriter:
    def __init__(self, metrics_dir: Path, trial_id: str, base: dict, parts: int = 0, enabled: bool = True):
        self.dir, self.trial_id, self.base, self.parts, self.enabled = metrics_dir, trial_id, base, parts, enabled
        self.rows: list[dict] = []
        if enabled:
            self.drop_parts_from(parts)

    def drop_parts_from(self, n: int) -> None:
        """Delete parts n, n+1, ... (written after the checkpoint we resume from)."""
        for p in self.dir.glob(f"part-{self.trial_id}-*.parquet"):
            if int(p.stem.rsplit("-", 1)[1]) >= n:
                p.unlink()

    def add(self, **row) -> None:
        if self.enabled:
            self.rows.append({**self.base, **row})

    def flush(self) -> int:
        """Write buffered rows as the next part; returns the number of parts written so far."""
        if self.enabled and self.rows:
            write_parquet(part_path(self.dir, self.trial_id, self.parts), self.rows)
            self.parts += 1
            self.rows = []
        return self.parts
