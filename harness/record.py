"""What a trial leaves under runs/<sweep>/trials/<id>/: config.yaml, status.json, checkpoints, and its
metrics parts under runs/<sweep>/metrics/.

One `TrialRecord` per trial, used by the single-model loop (train.py) and by the packed loop
(pack.py), so both write the same files and either can resume a trial the other started.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from harness import checkpoints
from harness.config import TrialConfig, dump
from harness.metrics import MetricsWriter
from harness.storage import write_json, write_text


def trial_dir(out: Path, cfg: TrialConfig) -> Path:
    return Path(out) / "trials" / cfg.trial_id()


def read_status(tdir: Path) -> dict:
    p = tdir / "status.json"
    return json.loads(p.read_text()) if p.exists() else {}


def finished_state(out: Path, cfg: TrialConfig) -> Optional[str]:
    """'done' or 'diverged' if the trial already ended, else None (read before any data is loaded)."""
    state = read_status(trial_dir(out, cfg)).get("state")
    return state if state in ("done", "diverged") else None


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


class TrialRecord:
    """The files of one trial. Only the main rank (`main`) writes."""

    def __init__(self, cfg: TrialConfig, out: Path, sweep: str, spec: dict, spe: int, total: int, world: int = 1,
                 main: bool = True):
        self.cfg, self.out, self.spe, self.total, self.main = cfg, Path(out), spe, total, main
        self.tid = cfg.trial_id()
        self.dir = trial_dir(out, cfg)
        self.last = self.dir / "ckpt" / "last.pt"
        self.ck_iters = set(cfg.checkpoints.iterations) | ({total} if cfg.checkpoints.final else set())
        self.ck_epochs = {e * spe: e for e in cfg.checkpoints.epochs}
        self.common = {"model_spec": spec, "data_spec": cfg.data.model_dump(mode="json"), "trial_id": self.tid,
                       "config": cfg.model_dump(mode="json")}
        self.base = {"sweep": sweep, "trial_id": self.tid, **tag_columns([cfg.tags])[0],
                     "seed": cfg.seed, "world_size": world}
        self.eta_init = cfg.warmup.eta_init
        self.iteration = 0
        self.writer: Optional[MetricsWriter] = None

    def resume_from(self, device) -> Optional[dict]:
        """The rolling checkpoint to resume from, if there is one."""
        return checkpoints.load(self.last, device) if self.last.exists() else None

    def open(self, ck: Optional[dict], eta_init) -> None:
        """Start writing: after the resumed checkpoint `ck`, or afresh (removing any earlier run's files)."""
        if ck is None and self.main and self.dir.exists():
            shutil.rmtree(self.dir)
        self.eta_init = eta_init
        self.iteration = ck["iteration"] if ck else 0
        self.writer = MetricsWriter(self.out / "metrics", self.tid, self.base, ck["parts"] if ck else 0,
                                    enabled=self.main)
        if self.main:
            write_text(self.dir / "config.yaml", dump(self.cfg))
        self.status("running")

    def status(self, state: str, **extra) -> str:
        if self.main:
            write_json(self.dir / "status.json", {"state": state, "iteration": self.iteration, "total": self.total,
                                                  "eta_init": self.eta_init, **extra})
        return state

    def add(self, **row) -> None:
        self.writer.add(**row)

    def save_named(self, it: int, model_state) -> None:
        """The checkpoints the config lists at iteration `it` (iter=NNNNNN.pt and/or epoch=NNN.pt).
        `model_state` is called only when one is due."""
        names = [checkpoints.name_for(it)] if it in self.ck_iters else []
        names += [checkpoints.name_for(it, self.ck_epochs[it])] if it in self.ck_epochs else []
        if self.main and names:
            state = model_state()
            for name in names:
                checkpoints.save(self.dir / "ckpt" / name, model=state, iteration=it, epoch=it / self.spe,
                                 **self.common)

    def save_last(self, it: int, model: dict, optimizer: dict, elapsed: float) -> None:
        """Flush the metrics rows, then write the rolling checkpoint that a resume starts from."""
        self.iteration = it
        parts = self.writer.flush()
        if self.main:
            checkpoints.save(self.last, model=model, optimizer=optimizer, rng=checkpoints.rng_state(), iteration=it,
                             epoch=it / self.spe, parts=parts, elapsed=elapsed, eta_init=self.eta_init, **self.common)
        self.status("running")

    def finish(self, it: int, state: str, **extra) -> str:
        self.iteration = it
        self.writer.flush()
        return self.status(state, **extra)
