"""What a trial's config implies once its data is loaded: the model spec, steps per epoch and in all, the
evaluation interval, and the perf section's autocast and memory format. Shared by both engines."""
from __future__ import annotations

import contextlib

import torch

from harness.config import TrialConfig
from harness.data import Dataset
from harness.errors import ConfigError


def model_spec(cfg: TrialConfig, ds: Dataset) -> dict:
    """The spec `harness.models.build` takes: the model section plus the data's classes and channels."""
    return {**cfg.model.model_dump(mode="json"), "num_classes": ds.num_classes,
            "in_channels": int(ds.train.images.shape[1])}


def steps(cfg: TrialConfig, n_train: int) -> tuple[int, int]:
    """(iterations per epoch, total iterations) of a trial on `n_train` images."""
    spe = n_train // cfg.data.batch_size
    if spe == 0:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size}: larger than the {n_train} train images")
    return spe, cfg.budget.iterations or cfg.budget.epochs * spe


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
