"""Weight-space geometry between checkpoints: distances, angles, interpolation, error barrier.

Angles between solutions are the S5 measure for scale-invariant nets trained on the sphere
(Sadrtdinov et al. 2024); the error barrier on the straight segment tells whether two
solutions share a basin (Frankle et al. 2020, linear mode connectivity).
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import pandas as pd
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


PAIRS = {"all": lambda n: list(itertools.combinations(range(n), 2)),
         "consecutive": lambda n: [(i, i + 1) for i in range(n - 1)],
         "first": lambda n: [(0, i) for i in range(1, n)]}


def _pairs(states: Mapping[str, dict[str, Tensor]], pairs: str) -> list[tuple[str, str]]:
    """all, neighbours in the given order, or the first against each other: pairs of keys."""
    if len(states) < 2:
        raise ValueError("geometry needs at least two checkpoints")
    keys = list(states)
    return [(keys[i], keys[j]) for i, j in PAIRS[pairs](len(keys))]


def geometry(model: nn.Module, states: Mapping[str, dict[str, Tensor]], pairs: str = "all") -> pd.DataFrame:
    """`distances` for each pair of states (id -> state dict): rows ckpt_a, ckpt_b, group, distance, angle_deg, ..."""
    return pd.DataFrame([{"ckpt_a": a, "ckpt_b": b, **r} for a, b in _pairs(states, pairs)
                         for r in distances(model, states[a], states[b])])


def segments(model: nn.Module, states: Mapping[str, dict[str, Tensor]], splits: dict[str, Batches],
             bn_batches: Batches | None, pairs: str = "all", t_points: int = 11) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`interpolate` along the straight segment of each pair: rows ckpt_a, ckpt_b, t, split, ...; error barriers
    ckpt_a, ckpt_b, split, error_barrier."""
    ts = torch.linspace(0, 1, t_points).tolist()
    rows, bars = [], []
    for a, b in _pairs(states, pairs):
        along, error = interpolate(model, states[a], states[b], ts, splits, bn_batches)
        rows += [{"ckpt_a": a, "ckpt_b": b, **r} for r in along]
        bars += [{"ckpt_a": a, "ckpt_b": b, "split": s, "error_barrier": v} for s, v in error.items()]
    return pd.DataFrame(rows), pd.DataFrame(bars)
