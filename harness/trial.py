"""What a trial's config implies once its data is loaded: the model spec, steps per epoch and in all, the
evaluation interval, and the perf section's autocast and memory format. Shared by both engines."""
from __future__ import annotations

import contextlib
import logging
import math

import torch

from harness.config import TrialConfig
from harness.data import Dataset
from harness.errors import ConfigError
from harness.models import build
from harness.sync_bn import has_batchnorm

log = logging.getLogger("heurbench.trial")


def model_spec(cfg: TrialConfig, ds: Dataset) -> dict:
    """The spec `harness.models.build` takes: the model section plus the data's classes and channels."""
    return {**cfg.model.model_dump(mode="json"), "num_classes": ds.num_classes,
            "in_channels": int(ds.train.images.shape[1])}


def bn_batch(cfg: TrialConfig, spec: dict, world: int) -> float:
    """How many images each BN layer of the trial's model normalises over in training: the global batch in one
    process or with `model.bn: sync`, each DDP rank's share otherwise; NaN for a model without batch norm."""
    with torch.device("meta"):
        model = build(spec)
    if not has_batchnorm(model):
        return math.nan
    return cfg.data.batch_size if world == 1 or cfg.model.bn == "sync" else cfg.data.batch_size // world


def steps(cfg: TrialConfig, n_train: int) -> tuple[int, int]:
    """(iterations per epoch, total iterations) of a trial on `n_train` images."""
    spe = n_train // cfg.data.batch_size
    if spe == 0:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size}: larger than the {n_train} train images")
    total = cfg.budget.iterations or cfg.budget.epochs * spe
    check_budget(cfg, spe, total)
    return spe, total


def check_budget(cfg: TrialConfig, spe: int, total: int) -> None:
    """What the config checks could not: checkpoints and milestones in the unit other than the budget's, now
    that the `spe` steps per epoch are known (beyond a `total`-iteration budget: ConfigError); warmup or freeze
    longer than the budget (a logged warning: a shortened smoke run of a long config means it)."""
    per = {"iteration": 1, "epoch": spe}
    where = f"beyond the budget of {total} iterations ({spe} per epoch)"
    for unit, listed in (("iteration", cfg.checkpoints.iterations), ("epoch", cfg.checkpoints.epochs)):
        late = [x for x in listed if x * per[unit] > total]
        if late:
            raise ConfigError(f"checkpoints.{unit}s = {listed}: {late} {where} (never taken)")
    late = [m for m in cfg.schedule.milestones if m * per[cfg.schedule.unit] >= total]
    if cfg.schedule.name == "step" and late:
        raise ConfigError(f"schedule.milestones = {cfg.schedule.milestones} ({cfg.schedule.unit}s): {late} at or "
                          f"{where} (the LR never changes there)")
    for section in ("warmup", "freeze"):
        s = getattr(cfg, section)
        length = s.length * (spe if s.unit == "epoch" else 1)
        if length > total:
            log.warning("trial %s: %s.length = %d %ss is longer than the budget of %d iterations (%d per epoch)",
                        cfg.trial_id(), section, s.length, s.unit, total, spe)


def eval_interval(cfg: TrialConfig, spe: int) -> int:
    """Iterations between evaluations."""
    return cfg.eval.every * (spe if cfg.eval.unit == "epoch" else 1)


def autocast(cfg: TrialConfig, device: torch.device):
    """bf16 autocast on CUDA when perf.bf16, else a no-op context."""
    if device.type == "cuda" and cfg.perf.bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def memory_format(cfg: TrialConfig) -> torch.memory_format:
    return torch.channels_last if cfg.perf.channels_last else torch.contiguous_format
