"""Mode connectivity: curves between two weight vectors, training the bend, loss along t, barrier.

Garipov et al. 2018 (sec. 3): a curve phi_theta(t) with fixed ends w0 = phi(0), w1 = phi(1)
and one trainable bend theta, initialised at the midpoint; theta minimises
E_{t ~ U(0,1)} L(phi_theta(t)), one t sampled per step.
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from analysis.evaluation import (Batches, LossFn, device_of, evaluate_points, load_vector, param_vector, restored,
                                 unflatten)
from analysis.progress import Progress

KINDS = ("polychain", "bezier", "segment")


class Curve:
    """Path between fixed w0 and w1: one-bend polygonal chain, quadratic Bezier, or straight segment."""

    def __init__(self, w0: Tensor, w1: Tensor, kind: str = "polychain", theta: Tensor | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown curve {kind!r}; expected one of {KINDS}")
        self.w0, self.w1, self.kind = w0.detach(), w1.detach(), kind
        start = (self.w0 + self.w1) / 2 if theta is None else theta.detach().to(self.w0)
        self.theta = start.clone().requires_grad_(kind != "segment")

    def __call__(self, t: float) -> Tensor:
        """phi_theta(t) (Garipov et al. 2018, sec. 3.2: polychain and Bezier forms)."""
        if self.kind == "segment":
            return (1 - t) * self.w0 + t * self.w1
        if self.kind == "bezier":
            return (1 - t) ** 2 * self.w0 + 2 * t * (1 - t) * self.theta + t**2 * self.w1
        if t <= 0.5:
            return self.w0 + 2 * t * (self.theta - self.w0)
        return self.theta + (2 * t - 1) * (self.w1 - self.theta)


def train_curve(model: nn.Module, curve: Curve, batches: Batches, steps: int, optimizer: torch.optim.Optimizer,
                loss_fn: LossFn = F.cross_entropy, seed: int = 0) -> list[float]:
    """Train `curve.theta` for `steps` SGD steps, each at a fresh t ~ U(0, 1) and random batch; returns losses.

    The model only supplies the architecture (and BN buffers, used in train mode); its own
    weights are not changed. `optimizer` owns `[curve.theta]`, so calls can be chained.
    """
    if curve.kind == "segment":
        raise ValueError("a straight segment has no bend to train")
    device = device_of(model)
    generator = torch.Generator().manual_seed(seed)
    progress, losses = Progress(steps, f"curve training ({curve.kind})"), []
    with restored(model):
        model.train()
        for _ in range(steps):
            t = float(torch.rand((), generator=generator))
            x, y = batches.sample(device, generator)
            loss = loss_fn(functional_call(model, unflatten(model, curve(t)), (x,)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            progress.step()
    return losses


def evaluate_path(model: nn.Module, path: Curve, ts: Sequence[float], splits: dict[str, Batches],
                  bn_batches: Batches | None, loss_fn: LossFn = F.cross_entropy, stack: int | None = None) -> list[dict]:
    """Loss and accuracy per split at each t, BN statistics recomputed at every point, `stack` points per
    pass (`evaluate_points`); rows (t, split, ...)."""
    per_point = evaluate_points(model, (path(float(t)) for t in ts), splits, bn_batches, loss_fn, stack,
                                Progress(len(ts), f"evaluating {path.kind}"))
    return [{"t": float(t), **row} for t, rows in zip(ts, per_point) for row in rows]


def barrier(values: Sequence[float]) -> float:
    """max_t v(t) - max(v(0), v(1)) for values ordered along t from 0 to 1 (loss or error)."""
    return max(values) - max(values[0], values[-1])


def barriers(rows: list[dict], metric: str = "loss") -> dict[str, float]:
    """Barrier per split from `evaluate_path` rows; metric "error" uses 1 - accuracy."""
    out = {}
    for split in dict.fromkeys(r["split"] for r in rows):
        ordered = sorted((r for r in rows if r["split"] == split), key=lambda r: r["t"])
        out[split] = barrier([1 - r["accuracy"] if metric == "error" else r[metric] for r in ordered])
    return out


def connect(model: nn.Module, state_a: dict[str, Tensor], state_b: dict[str, Tensor], splits: dict[str, Batches],
            train: Batches, curve: str = "polychain", epochs: Sequence[int] = (20,), t_points: int = 21,
            lr: float = 0.015, momentum: float = 0.9, weight_decay: float = 5e-4,
            seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, nn.Module]:
    """Train a `curve` between two states (SGD on `train`, evaluated after each of `epochs`, the last being its
    length) and compare it with the straight segment (curve_epoch 0): rows (path, curve_epoch, t, split, ...),
    barriers per (path, curve_epoch, split), and `model` holding the trained bend."""
    w0, w1 = param_vector(model, state_a), param_vector(model, state_b)
    ts = torch.linspace(0, 1, t_points).tolist()
    segment = evaluate_path(model, Curve(w0, w1, "segment"), ts, splits, train)
    rows = [{"path": "segment", "curve_epoch": 0, **r} for r in segment]
    path = Curve(w0, w1, curve)
    optimizer = torch.optim.SGD([path.theta], lr=lr, momentum=momentum, weight_decay=weight_decay)
    steps_per_epoch, done = math.ceil(len(train) / train.batch_size), 0
    for epoch in sorted(set(epochs)):
        train_curve(model, path, train, (epoch - done) * steps_per_epoch, optimizer, seed=seed + epoch)
        done = epoch
        rows += [{"path": curve, "curve_epoch": epoch, **r} for r in evaluate_path(model, path, ts, splits, train)]
    summary = []
    for (kind, epoch), part in pd.DataFrame(rows).groupby(["path", "curve_epoch"], sort=False):
        part_rows = part.to_dict("records")
        losses, errors = barriers(part_rows), barriers(part_rows, "error")
        summary += [{"path": kind, "curve_epoch": epoch, "split": s, "loss_barrier": losses[s],
                     "error_barrier": errors[s]} for s in losses]
    load_vector(model, path.theta.detach())
    return pd.DataFrame(rows), pd.DataFrame(summary), model
