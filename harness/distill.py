"""Knowledge distillation (Hinton et al. 2015) as a heuristic: the KD loss and the teacher it needs.

Without augmentation the teacher sees each train image unchanged every epoch, so its logits are computed once per
image before training and looked up by the batch's train indices; with augmentation it runs on every batch.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from harness.checkpoints import load_model
from harness.config import DistillCfg, TrialConfig
from harness.data import Dataset
from harness.heuristics import Context, Heuristic
from harness.layout import RunDir
from harness.registry import register
from harness.trial import autocast, memory_format

log = logging.getLogger("heurbench.train")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, weight: float) -> torch.Tensor:
    """weight * T^2 * KL(p_teacher^T || p_student^T) + (1 - weight) * CE(student, labels).

    The T^2 factor keeps the soft-target gradients' scale independent of T (Hinton, sec. 2).
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t
    if weight == 1.0:
        return soft
    return weight * soft + (1 - weight) * F.cross_entropy(student_logits, labels)


def load_teacher(cfg: DistillCfg, out: Path, device, mem: torch.memory_format) -> nn.Module:
    """Rebuild the teacher from its heurbench checkpoint (a path or @sweep:point:file), frozen, in eval mode, in the
    student's memory format."""
    path = RunDir(out).reference(cfg.teacher)
    if not path.is_file():
        raise FileNotFoundError(f"distill.teacher = {cfg.teacher!r}: no such checkpoint file ({path})")
    model = load_model(path, device).to(memory_format=mem)
    model.eval().requires_grad_(False)
    return model


def cacheable(cfg: TrialConfig) -> bool:
    """Whether the teacher's logits can be computed once per train image: without augmentation, each reaches the
    student unchanged every epoch."""
    return not cfg.data.augment


@torch.no_grad()
def train_logits(teacher: nn.Module, ds: Dataset, batch: int, amp: Callable, mem: torch.memory_format) -> torch.Tensor:
    """The teacher's float32 logits [N, classes] for every (unaugmented) train image, `batch` images at a time (on
    every DDP rank: each looks its shard up by global train index)."""
    t0, n = time.perf_counter(), len(ds.train)
    log.info("distill: teacher logits for the %d train images (once; data.augment is false)", n)
    out = []
    for lo in range(0, n, batch):
        with amp():
            out.append(teacher(ds.normalize(ds.train.images[lo:lo + batch]).contiguous(memory_format=mem)).float())
    log.info("distill: teacher logits done in %.1f s", time.perf_counter() - t0)
    return torch.cat(out)


@register.heuristic("distill", options=DistillCfg)
class Distill(Heuristic):
    """The KD loss against the frozen teacher's logits on the same inputs, in place of the cross-entropy: looked up
    by train index when `cacheable` (`cached`), else computed on the batch."""

    indexed = True

    def __init__(self, options: DistillCfg, ctx: Context):
        super().__init__(options, ctx)
        cfg, mem = ctx.cfg, memory_format(ctx.cfg)
        teacher, cache = load_teacher(options, ctx.out, ctx.device, mem), cacheable(cfg)
        self.teacher: Optional[nn.Module] = None if cache else teacher
        self.cached: Optional[torch.Tensor] = \
            train_logits(teacher, ctx.data, cfg.data.eval_batch_size, autocast(cfg, ctx.device), mem) if cache else None

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor,
             idx: torch.Tensor) -> torch.Tensor:
        """Called inside the student's autocast, on its channels_last input when perf says so."""
        if self.cached is not None:
            t_logits = self.cached[idx]
        else:
            with torch.no_grad():
                t_logits = self.teacher(x).float()
        return kd_loss(logits.float(), t_logits, y, self.options.temperature, self.options.weight)
