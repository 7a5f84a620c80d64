"""Knowledge-distillation loss (Hinton et al. 2015) and the teacher it needs."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import DistillCfg


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
    from harness.checkpoints import load_model
    from harness.refs import resolve

    path = resolve(cfg.teacher, out)
    if not path.is_file():
        raise FileNotFoundError(f"distill.teacher = {cfg.teacher!r}: no such checkpoint file ({path})")
    model = load_model(path, device)
    model.eval().requires_grad_(False)
    return model
