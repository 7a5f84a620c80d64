"""Loss-surface planes: the plane through three weight vectors, a grid of evaluations, projections.

Garipov et al. 2018 (sec. 4.1, fig. 1): with w0, w1, w2 in weight space, u = w1 - w0 and
v = w2 - w0 made orthonormal (Gram-Schmidt); a point (x, y) is w0 + x u_hat + y v_hat.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.evaluation import Batches, LossFn, evaluate_points, param_vector
from analysis.progress import Progress


@dataclass
class Plane:
    """Origin plus two orthonormal directions in weight space (float64); coordinates in weight-norm units."""

    origin: Tensor
    e1: Tensor
    e2: Tensor

    @classmethod
    def through(cls, w0: Tensor, w1: Tensor, w2: Tensor) -> "Plane":
        """The plane through three points, origin w0, first axis towards w1 (float64: float32 dot
        products over millions of weights leave the axes visibly non-orthogonal)."""
        w0, w1, w2 = w0.double(), w1.double(), w2.double()
        u = w1 - w0
        v = w2 - w0
        if u.norm() == 0:
            raise ValueError("w0 and w1 coincide: no plane")
        e1 = u / u.norm()
        v = v - (v @ e1) * e1
        if v.norm() <= 1e-6 * u.norm():
            raise ValueError("the three points are collinear: no plane")
        return cls(w0, e1, v / v.norm())

    def point(self, x: float, y: float) -> Tensor:
        return self.origin + x * self.e1 + y * self.e2

    def project(self, w: Tensor) -> tuple[float, float, float]:
        """Least-squares coordinates (x, y) of w on the plane and its distance from it."""
        d = w.double() - self.origin
        x, y = float(d @ self.e1), float(d @ self.e2)
        return x, y, float((d - x * self.e1 - y * self.e2).norm())


def grid_axes(coords: Sequence[tuple[float, float]], points: int = 21,
              margin: float = 0.2) -> tuple[list[float], list[float]]:
    """Evenly spaced x and y values covering the given (x, y) points plus `margin` of their span."""
    axes = []
    for values in zip(*coords):
        lo, hi = min(values), max(values)
        pad = margin * (hi - lo)
        axes.append(torch.linspace(lo - pad, hi + pad, points).tolist())
    return axes[0], axes[1]


def evaluate_plane(model: nn.Module, plane: Plane, xs: Sequence[float], ys: Sequence[float],
                   splits: dict[str, Batches], bn_batches: Batches | None,
                   loss_fn: LossFn = F.cross_entropy, stack: int | None = None) -> list[dict]:
    """Loss and accuracy per split at every grid point (BN recomputed at each), `stack` points per pass
    (`evaluate_points`); rows (x, y, split, ...)."""
    grid = [(float(x), float(y)) for x in xs for y in ys]
    per_point = evaluate_points(model, (plane.point(x, y) for x, y in grid), splits, bn_batches, loss_fn, stack,
                                Progress(len(grid), "plane grid"))
    return [{"x": x, "y": y, **row} for (x, y), rows in zip(grid, per_point) for row in rows]


def plane(model: nn.Module, states: Mapping[str, dict[str, Tensor]], splits: dict[str, Batches], train: Batches,
          grid: int = 21, margin: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Loss/accuracy on a grid x grid plane through the first three states (labelled by their keys), covering every
    state's projection plus `margin` of their span: grid rows (x, y, split, ...), points (label, x, y, residual)."""
    if len(states) < 3:
        raise ValueError("plane needs three checkpoints (then any number to project)")
    vectors = [param_vector(model, s) for s in states.values()]
    through = Plane.through(*vectors[:3])
    points = [{"label": k, **dict(zip(("x", "y", "residual"), through.project(v)))} for k, v in zip(states, vectors)]
    xs, ys = grid_axes([(p["x"], p["y"]) for p in points], grid, margin)
    return pd.DataFrame(evaluate_plane(model, through, xs, ys, splits, train)), pd.DataFrame(points)
