"""Representation similarity: CCA, SVCCA, PWCCA, linear CKA (full and unbiased minibatch).

Inputs are [points, features] matrices of two layers over the same inputs (see
`analysis.activations.to_points`). Everything runs on the inputs' device in `dtype`
(float64 by default; float32 is the fast GPU path). CCA needs more points than x and y
features together, and full-rank features: otherwise a ValueError says so, never a NaN.
Canonical correlations are biased upwards when there are few points per feature (for
independent data the mean squared correlation is about max(dx, dy) / n), so use n >> dx + dy.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

from analysis.activations import to_points

log = logging.getLogger("heurbench.analysis")


def _centered(x: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a [points, features] matrix, got shape {tuple(x.shape)}")
    x = x.to(dtype)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return x - x.mean(0, keepdim=True)


def _basis(xc: Tensor, name: str) -> Tensor:
    """Orthonormal basis of the column space of centred data, via reduced QR; checks rank."""
    n, d = xc.shape
    q, r = torch.linalg.qr(xc)
    diag = r.diagonal().abs()
    tol = diag.max() * max(n, d) * torch.finfo(xc.dtype).eps
    rank = int((diag > tol).sum())
    if rank < d:
        raise ValueError(f"{name}: rank-deficient features (rank {rank} < {d}, e.g. constant or duplicated "
                         "units); use svcca, which keeps the top singular directions")
    return q


def _canonical(x: Tensor, y: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(centred x, basis of x, U, rho) with Qx^T Qy = U diag(rho) V^T; rho sorted descending."""
    xc, yc = _centered(x, dtype, "x"), _centered(y, dtype, "y")
    if xc.shape[0] != yc.shape[0]:
        raise ValueError(f"x and y have different numbers of points: {xc.shape[0]} vs {yc.shape[0]}")
    n, dx, dy = xc.shape[0], xc.shape[1], yc.shape[1]
    if n <= dx + dy:  # centred subspaces of R^(n-1) would then share dx+dy-n+1 directions: rho = 1 by construction
        raise ValueError(f"{n} points for {dx} + {dy} features; CCA needs more points than features "
                         "(use more inputs, svcca, or conv='positions')")
    qx, qy = _basis(xc, "x"), _basis(yc, "y")
    u, rho, _ = torch.linalg.svd(qx.T @ qy, full_matrices=False)
    return xc, qx, u, rho.clamp(max=1.0)


def cca(x: Tensor, y: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """All min(dx, dy) canonical correlations, descending (Raghu et al. 2017, sec. 2; Björck & Golub QR form)."""
    return _canonical(x, y, dtype)[3]


def svd_reduce(x: Tensor, keep: float = 0.99, dtype: torch.dtype = torch.float64) -> Tensor:
    """Centred data projected on its fewest top singular directions holding `keep` of the variance."""
    xc = _centered(x, dtype, "x")
    var, vecs = torch.linalg.eigh(xc.T @ xc)  # right singular vectors, ascending variance
    var, vecs = var.flip(0).clamp(min=0), vecs.flip(1)
    total = var.sum()
    if total <= 0:
        raise ValueError("constant features: no variance to keep")
    k = int((torch.cumsum(var, 0) / total < keep).sum()) + 1
    return xc @ vecs[:, : min(k, var.numel())]


def svcca(x: Tensor, y: Tensor, keep: float = 0.99, dtype: torch.dtype = torch.float64) -> float:
    """Mean canonical correlation after SVD reduction to `keep` of the variance (Raghu et al. 2017, sec. 2.1)."""
    return float(cca(svd_reduce(x, keep, dtype), svd_reduce(y, keep, dtype), dtype).mean())


def pwcca(x: Tensor, y: Tensor, dtype: torch.dtype = torch.float64) -> float:
    """Projection-weighted CCA (Morcos et al. 2018, sec. 3.1, eq. 1).

    Weights alpha_i = sum_j |<h_i, z_j>| over the units z_j of the layer with fewer units,
    h_i its orthonormal canonical variates, as in the authors' code.
    """
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    xc, qx, u, rho = _canonical(x, y, dtype)
    alpha = ((qx @ u).T @ xc).abs().sum(1)
    return float((alpha * rho).sum() / alpha.sum())


def linear_cka(x: Tensor, y: Tensor, dtype: torch.dtype = torch.float64) -> float:
    """Linear CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred features (Kornblith et al. 2019, eq. 5)."""
    xc, yc = _centered(x, dtype, "x"), _centered(y, dtype, "y")
    if xc.shape[0] != yc.shape[0] or xc.shape[0] < 2:
        raise ValueError(f"CKA needs the same >= 2 points in x and y, got {xc.shape[0]} and {yc.shape[0]}")
    denom = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    if denom == 0:
        raise ValueError("constant features: CKA is undefined")
    return float(torch.linalg.matrix_norm(yc.T @ xc) ** 2 / denom)


def _hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two n x n Gram matrices, n > 3."""
    n = k.shape[0]
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    trace = (k * l).sum()
    return (trace + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * (k.sum(0) @ l.sum(0)) / (n - 2)) / (n * (n - 3))


def minibatch_cka(pairs: Iterable[tuple[Tensor, Tensor]], dtype: torch.dtype = torch.float64) -> float:
    """Linear CKA from unbiased HSIC accumulated over minibatches (Nguyen et al. 2021, sec. 3.1).

    `pairs` yields matching (x_i, y_i) minibatches of > 3 points; one pair is unbiased CKA.
    Memory is O(batch^2), so it scales to any number of inputs.
    """
    xy = xx = yy = 0.0
    for x, y in pairs:
        if x.shape[0] != y.shape[0] or x.shape[0] < 4:
            raise ValueError(f"each minibatch needs the same >= 4 points in x and y, got {x.shape[0]} and {y.shape[0]}")
        x, y = x.reshape(x.shape[0], -1).to(dtype), y.reshape(y.shape[0], -1).to(dtype)
        k, l = x @ x.T, y @ y.T
        xy, xx, yy = xy + _hsic_unbiased(k, l), xx + _hsic_unbiased(k, k), yy + _hsic_unbiased(l, l)
    if not (isinstance(xx, Tensor) and xx > 0 and yy > 0):
        raise ValueError("minibatch CKA undefined: no minibatches, or a non-positive self-HSIC (constant features)")
    return float(xy / torch.sqrt(xx * yy))


def mean_cca(x: Tensor, y: Tensor, dtype: torch.dtype = torch.float64) -> float:
    """Mean of all canonical correlations (the plain-CCA similarity of Raghu et al. 2017)."""
    return float(cca(x, y, dtype).mean())


MEASURES: dict[str, Callable[..., float]] = {
    "cca": mean_cca,
    "svcca": svcca,
    "pwcca": pwcca,
    "cka": linear_cka,
}


def layer_similarity(acts_a: Mapping[str, Tensor], acts_b: Mapping[str, Tensor], measure: str = "svcca",
                     conv: str = "positions", max_points: int | None = 20_000, seed: int = 0,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Layer x layer heatmap [len(acts_a), len(acts_b)] between two captures over the same inputs.

    The two captures may come from different models (teacher vs student); see `to_points`
    for how conv layers become data points; each pair is computed on `device` (default: where
    the activations are). A pair the measure rejects (e.g. a dead, constant layer) is logged
    with the reason and left NaN, so one layer does not void the heatmap.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; expected one of {sorted(MEASURES)}")
    fn = MEASURES[measure]
    out = torch.full((len(acts_a), len(acts_b)), math.nan, dtype=torch.float64)
    for i, (name_a, a) in enumerate(acts_a.items()):
        for j, (name_b, b) in enumerate(acts_b.items()):
            try:
                x, y = to_points(a, b, conv, max_points, seed)
                out[i, j] = fn(x.to(device), y.to(device), dtype=dtype)
            except ValueError as err:
                log.warning("%s %s vs %s: %s", measure, name_a, name_b, err)
    return out
