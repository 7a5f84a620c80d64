"""Weight-space geometry between checkpoints: distances, angles, interpolation, error barrier.

Angles between solutions are the S5 measure for scale-invariant nets trained on the sphere
(Sadrtdinov et al. 2024); the error barrier on the straight segment tells whether two
solutions share a basin (Frankle et al. 2020, linear mode connectivity).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.connectivity import Curve, barriers, evaluate_path
from analysis.evaluation import Batches, LossFn, param_vector


def group_parameters(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names per group: "all", then each of the model's `layer_groups` (if it has them)."""
    names = [n for n, _ in model.named_parameters()]
    groups = {"all": names}
    for group, prefixes in getattr(model, "layer_groups", {}).items():
        groups[group] = [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]
    return groups


def distances(model: nn.Module, state_a: dict[str, Tensor], state_b: dict[str, Tensor]) -> list[dict]:
    """Euclidean distance, angle (degrees) and both norms, for the whole net and per layer group."""
    rows = []
    for group, names in group_parameters(model).items():
        if not names:
            continue
        a = torch.cat([state_a[n].detach().reshape(-1).double().cpu() for n in names])
        b = torch.cat([state_b[n].detach().reshape(-1).double().cpu() for n in names])
        na, nb = float(a.norm()), float(b.norm())
        angle = math.degrees(math.acos(min(1.0, max(-1.0, float(a @ b) / (na * nb))))) if na * nb > 0 else math.nan
        rows.append({"group": group, "distance": float((a - b).norm()), "angle_deg": angle, "norm_a": na, "norm_b": nb})
    return rows


def interpolate(model: nn.Module, state_a: dict[str, Tensor], state_b: dict[str, Tensor], ts: Sequence[float],
                splits: dict[str, Batches], bn_batches: Batches | None,
                loss_fn: LossFn = F.cross_entropy) -> tuple[list[dict], dict[str, float]]:
    """Loss/accuracy along (1-t) a + t b (BN recomputed at each t) and the error barrier per split."""
    segment = Curve(param_vector(model, state_a), param_vector(model, state_b), "segment")
    rows = evaluate_path(model, segment, ts, splits, bn_batches, loss_fn)
    return rows, barriers(rows, "error")
