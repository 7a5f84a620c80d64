"""Knowledge distillation (Hinton et al. 2015) as a heuristic: the KD loss and the teacher it needs."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.checkpoints import load_model
from harness.config import DistillCfg
from harness.heuristics import Context, Heuristic
from harness.layout import RunDir
from harness.registry import register


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


@register.heuristic("distill", options=DistillCfg)
class Distill(Heuristic):
    """The KD loss against the frozen teacher's logits on the same inputs, in place of the cross-entropy."""

    def __init__(self, options: DistillCfg, ctx: Context):
        super().__init__(options, ctx)
        self.teacher = load_teacher(options, ctx.out, ctx.device)

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = self.teacher(x)
        return kd_loss(logits.float(), t_logits.float(), y, self.options.temperature, self.options.weight)
