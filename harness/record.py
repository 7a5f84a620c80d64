"""What a trial leaves in its run folder (paths from harness.layout): config.yaml, status.json, checkpoints,
and its metrics parts.

One `TrialRecord` per trial, used by the training loop for every engine, so a plain trial
and a member of a pack write the same files and either can resume a trial the other started.
"""
from __future__ import annotations

import math

import os
import shutil
from pathlib import Path
from typing import Callable, Optional

from harness import checkpoints, confine, provenance
from harness.config import TrialConfig, dump
from harness.errors import CheckpointError
from harness.grid import FINISHED
from harness.layout import RunDir
from harness.metrics import MetricsWriter, tag_columns
from harness.storage import write_json, write_text

RESUME_KEYS = ("model", "model_spec", "optimizer", "rng", "iteration", "parts", "elapsed")  # what save_last writes


def finished_state(out: Path, cfg: TrialConfig) -> Optional[str]:
    """'done' or 'diverged' if the trial already ended, else None (read before any data is loaded)."""
    state = RunDir(out).trial(cfg.trial_id()).read_status().get("state")
    return state if state in FINISHED else None


class TrialRecord:
    """The files of one trial. Only the main rank (`main`) writes."""

    def __init__(self, cfg: TrialConfig, out: Path, sweep: str, spec: dict, spe: int, total: int, world: int = 1,
                 main: bool = True, origin: Optional[dict] = None, bn_batch: float = math.nan):
        self.cfg, self.run, self.spe, self.total, self.main = cfg, RunDir(out), spe, total, main
        self.tid = cfg.trial_id()
        self.dir = self.run.trial(self.tid)
        self.ck_iters = set(cfg.checkpoints.iterations) | ({total} if cfg.checkpoints.final else set())
        self.ck_epochs = {e * spe: e for e in cfg.checkpoints.epochs}
        self.common = {"model_spec": spec, "data_spec": cfg.data.model_dump(mode="json"), "trial_id": self.tid,
                       "config": cfg.model_dump(mode="json"), "provenance": origin or {}}
        self.base = {"sweep": sweep, "trial_id": self.tid, **tag_columns([cfg.tags])[0],
                     "seed": cfg.seed, "world_size": world, "bn_batch": float(bn_batch)}
        self.probed: dict = {}  # the heuristics' probed values (harness/heuristics.py), e.g. warmup's eta_init
        self.iteration = 0
        self.ended: Optional[str] = None
        self.writer: Optional[MetricsWriter] = None

    def resume_from(self, device) -> Optional[dict]:
        """The rolling checkpoint to resume from, if there is one."""
        if not self.dir.last.exists():
            return None
        ck = checkpoints.load(self.dir.last, device, needs=RESUME_KEYS)
        if ck.get("trial_id", self.tid) != self.tid:
            raise CheckpointError(f"{self.dir.last}: a checkpoint of trial {ck['trial_id']}, not of this trial "
                                  f"{self.tid} (another trial's last.pt copied here?); not resumed (remove it to "
                                  f"start afresh)")
        return ck

    def open(self, ck: Optional[dict], probed: dict) -> None:
        """Start writing: after the resumed checkpoint `ck` (removing temp files an interrupted write left), or
        afresh (removing any earlier run's files)."""
        if self.main:
            if ck is None and os.path.lexists(self.dir.path):
                confine.writable(self.dir.path)  # a planted link is refused, never emptied
                shutil.rmtree(self.dir.path)
            for tmp in self.dir.temp_files() + self.run.metrics_temp_files(self.tid):
                tmp.unlink(missing_ok=True)
        self.probed = probed
        if ck is not None:
            provenance.warn_if_changed(self.tid, ck.get("provenance", {}), self.common["provenance"])
        self.common["provenance"] = provenance.started(self.common["provenance"], ck)
        self.iteration = ck["iteration"] if ck else 0
        self.writer = MetricsWriter(self.run, self.tid, self.base, ck["parts"] if ck else 0, enabled=self.main)
        if self.main:
            write_text(self.dir.config, dump(self.cfg))
        self.status("running")

    def status(self, state: str, **extra) -> str:
        if self.main:
            write_json(self.dir.status, {"state": state, "iteration": self.iteration, "total": self.total,
                                         **self.probed, **extra, "provenance": self.common["provenance"]})
        return state

    def add(self, row: dict) -> None:
        """A row built by `harness.metrics.row`."""
        self.writer.add(row)

    def save_named(self, it: int, model_state: Callable[[], dict]) -> None:
        """The checkpoints the config lists at iteration `it` (iter=NNNNNN.pt and/or epoch=NNN.pt).
        `model_state` is called only when one is due."""
        paths = [self.dir.named(it)] if it in self.ck_iters else []
        paths += [self.dir.named(it, self.ck_epochs[it])] if it in self.ck_epochs else []
        if self.main and paths:
            state = model_state()
            for path in paths:
                checkpoints.save(path, model=state, iteration=it, epoch=it / self.spe, **self.common)

    def save_last(self, it: int, model: dict, optimizer: dict, elapsed: float) -> None:
        """Flush the metrics rows, then write the rolling checkpoint that a resume starts from."""
        self.iteration = it
        parts = self.writer.flush()
        if self.main:
            checkpoints.save(self.dir.last, model=model, optimizer=optimizer, rng=checkpoints.rng_state(),
                             iteration=it, epoch=it / self.spe, parts=parts, elapsed=elapsed, **self.probed,
                             **self.common)
        self.status("running")

    def finish(self, it: int, state: str, **extra) -> str:
        self.iteration = it
        self.ended = state
        self.writer.flush()
        self.common["provenance"] = provenance.ended(self.common["provenance"])
        return self.status(state, **extra)
