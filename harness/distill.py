"""Knowledge-distillation loss (Hinton et al. 2015), the teacher it needs, and the training loss a trial uses."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from harness.checkpoints import load_model
from harness.config import DistillCfg
from harness.layout import RunDir


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


def load_teacher(cfg: DistillCfg, out: Path, device) -> nn.Module:
    """Rebuild the teacher from its heurbench checkpoint (a path or @sweep:point:file), frozen, in eval mode."""
    path = RunDir(out).reference(cfg.teacher)
    if not path.is_file():
        raise FileNotFoundError(f"distill.teacher = {cfg.teacher!r}: no such checkpoint file ({path})")
    model = load_model(path, device)
    model.eval().requires_grad_(False)
    return model


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, inputs, labels) -> loss


def cross_entropy(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


def training_loss(cfg: Optional[DistillCfg], out: Path, device) -> LossFn:
    """Cross-entropy on the labels, or with `distill` set the KD loss against the frozen teacher's logits on the
    same inputs."""
    if cfg is None:
        return cross_entropy
    teacher = load_teacher(cfg, out, device)

    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x)
        return kd_loss(logits.float(), t_logits.float(), y, cfg.temperature, cfg.weight)

    return loss
