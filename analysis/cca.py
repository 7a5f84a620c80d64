"""Representation similarity: CCA, SVCCA, PWCCA, linear and debiased CKA, each against its permutation null.

Inputs are [points, features] matrices of two layers over the same inputs (see
`analysis.activations.to_points`). Everything runs on the inputs' device in `dtype`
(float64 by default; float32 is the fast GPU path). CCA needs more points than x and y
features together, and full-rank features: otherwise a ValueError says so, never a NaN.
CCA-type measures and linear CKA are biased upwards when there are few points per feature: for
independent data E[mean rho^2] = max(dx, dy) / (n - 1) exactly. So `layer_similarity` reports with
every pair its n, widths and the measure with one side's rows permuted (the noise floor), and
`debiased_cka` (unbiased HSIC) is offered next to linear CKA.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from analysis.activations import capture, points, to_points
from analysis.evaluation import device_of

log = logging.getLogger("heurbench.analysis")


def _centered(x: Tensor, dtype: torch.dtype = torch.float64, name: str = "x") -> Tensor:
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


def _hsic_unbiased(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased HSIC (Song et al. 2012, eq. 5) of the linear kernels K = x x^T, L = y y^T, n > 3 points.

    tr(K~ L~), 1^T K~ 1 and 1^T K~ L~ 1 (K~: K with a zero diagonal) come from x and y directly, so the
    n x n Gram matrices are formed only when that is cheaper (more features than points).
    """
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    kd, ld = x.square().sum(1), y.square().sum(1)  # diagonals of K and L
    k1, l1 = x @ x.sum(0) - kd, y @ y.sum(0) - ld  # K~ 1 and L~ 1
    cross = (x.T @ y).square().sum() if dx * dy <= n * (dx + dy) else ((x @ x.T) * (y @ y.T)).sum()  # tr(K L)
    trace = cross - kd @ ld
    return (trace + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2 * (k1 @ l1) / (n - 2)) / (n * (n - 3))


def minibatch_cka(pairs: Iterable[tuple[Tensor, Tensor]], dtype: torch.dtype = torch.float64) -> float:
    """Linear CKA from unbiased HSIC accumulated over minibatches (Nguyen et al. 2021, sec. 3.1).

    `pairs` yields matching (x_i, y_i) minibatches of > 3 points; one pair is debiased CKA.
    Memory is O(batch^2) at most, so it scales to any number of inputs.
    """
    xy = xx = yy = 0.0
    for x, y in pairs:
        if x.shape[0] != y.shape[0] or x.shape[0] < 4:
            raise ValueError(f"each minibatch needs the same >= 4 points in x and y, got {x.shape[0]} and {y.shape[0]}")
        x, y = x.reshape(x.shape[0], -1).to(dtype), y.reshape(y.shape[0], -1).to(dtype)
        xy, xx, yy = xy + _hsic_unbiased(x, y), xx + _hsic_unbiased(x, x), yy + _hsic_unbiased(y, y)
    if not (isinstance(xx, Tensor) and xx > 0 and yy > 0):
        raise ValueError("minibatch CKA undefined: no minibatches, or a non-positive self-HSIC (constant features)")
    return float(xy / torch.sqrt(xx * yy))


def debiased_cka(x: Tensor, y: Tensor, dtype: torch.dtype = torch.float64) -> float:
    """Linear CKA with unbiased HSIC (Song et al. 2012, eq. 5; Nguyen et al. 2021, sec. 3.1): about 0 for
    independent x and y at any n, where `linear_cka` is biased upwards when n is not >> the widths."""
    return minibatch_cka([(_centered(x, dtype, "x"), _centered(y, dtype, "y"))], dtype)


def mean_cca(x: Tensor, y: Tensor, dtype: torch.dtype = torch.float64) -> float:
    """Mean of all canonical correlations (the plain-CCA similarity of Raghu et al. 2017)."""
    return float(cca(x, y, dtype).mean())


def mean_cca_squared(x: Tensor, y: Tensor, dtype: torch.dtype = torch.float64) -> float:
    """Mean squared canonical correlation, R^2_CCA (Kornblith et al. 2019, sec. 3); null: max(dx, dy) / (n - 1)."""
    return float(cca(x, y, dtype).square().mean())


# name -> (per-layer reduction, e.g. SVCCA's SVD truncation, whose output widths count as d_a, d_b; score)
MEASURES: dict[str, tuple[Callable[..., Tensor], Callable[..., float]]] = {
    "cca": (_centered, mean_cca),
    "cca_r2": (_centered, mean_cca_squared),
    "svcca": (svd_reduce, mean_cca),
    "pwcca": (_centered, pwcca),
    "cka": (_centered, linear_cka),
    "cka_debiased": (_centered, debiased_cka),
}

POINTS_PER_FEATURE = 10  # a pair with n < 10 (d_a + d_b) is flagged underdetermined
PERMUTATIONS = 3  # row shuffles behind each null


def _measure(name: str) -> tuple[Callable[..., Tensor], Callable[..., float]]:
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; expected one of {sorted(MEASURES)}")
    return MEASURES[name]


def _size(n: int, d_a: int, d_b: int) -> dict[str, int | bool]:
    return {"n": n, "d_a": d_a, "d_b": d_b, "underdetermined": n < POINTS_PER_FEATURE * (d_a + d_b)}


def pair_similarity(x: Tensor, y: Tensor, measure: str = "svcca", permutations: int = PERMUTATIONS, seed: int = 0,
                    dtype: torch.dtype = torch.float64) -> dict[str, float | int | bool]:
    """`measure` of two [points, features] matrices with its noise floor: similarity; n, d_a, d_b (widths after
    the measure's reduction); null_mean, null_max over `permutations` seeded shuffles of y's rows (same spectra,
    no correspondence); underdetermined = n < 10 (d_a + d_b)."""
    reduce, score = _measure(measure)
    x, y = reduce(x, dtype=dtype), reduce(y, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    null = [score(x, y[torch.randperm(y.shape[0], generator=generator).to(y.device)], dtype=dtype)
            for _ in range(permutations)]
    return {"similarity": score(x, y, dtype=dtype), **_size(x.shape[0], x.shape[1], y.shape[1]),
            "null_mean": sum(null) / len(null) if null else math.nan, "null_max": max(null, default=math.nan)}


def layer_similarity(acts_a: Mapping[str, Tensor], acts_b: Mapping[str, Tensor], measure: str = "svcca",
                     conv: str = "positions", max_points: int | None = 20_000, seed: int = 0,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float64,
                     permutations: int = PERMUTATIONS) -> pd.DataFrame:
    """Layer x layer `pair_similarity` rows (layer_a, layer_b, index_a, index_b, similarity, n, d_a, d_b,
    null_mean, null_max, underdetermined) between two captures over the same inputs.

    The captures may come from different models (teacher vs student); see `to_points` for how conv layers
    become data points. Every pair uses the same n, the fewest points any pair has (at most max_points;
    seeded subsample), so the heatmap compares like with like. Each pair runs on `device` (default: where
    the activations are). A pair the measure rejects (e.g. a dead, constant layer) is logged with the
    reason and left NaN, so one layer does not void the heatmap; underdetermined pairs are logged at DEBUG
    (`--verbose`): the caller logs one `underdetermined` summary line over all the rows it computed.
    """
    _measure(measure)
    n = min(points(a, b, conv) for a in acts_a.values() for b in acts_b.values())
    n = n if max_points is None else min(n, max_points)
    rows = []
    for i, (name_a, a) in enumerate(acts_a.items()):
        for j, (name_b, b) in enumerate(acts_b.items()):
            x, y = to_points(a, b, conv, n, seed)
            row = {"layer_a": name_a, "layer_b": name_b, "index_a": i, "index_b": j, "similarity": math.nan,
                   **_size(n, x.shape[1], y.shape[1]), "null_mean": math.nan, "null_max": math.nan}
            try:
                row.update(pair_similarity(x.to(device), y.to(device), measure, permutations, seed, dtype))
            except ValueError as err:
                log.warning("%s %s vs %s: %s", measure, name_a, name_b, err)
            if row["underdetermined"]:
                log.debug("%s %s vs %s: underdetermined, %d points for %d + %d features (< %dx); null %.3f",
                            measure, name_a, name_b, n, row["d_a"], row["d_b"], POINTS_PER_FEATURE, row["null_mean"])
            rows.append(row)
    return pd.DataFrame(rows)


def underdetermined(rows: pd.DataFrame) -> str | None:
    """One line over `layer_similarity` rows (of one or many calls): how many pairs are underdetermined and the
    worst n / (d_a + d_b); None when no pair is."""
    flagged = rows[rows.underdetermined.astype(bool)].reset_index(drop=True)
    if flagged.empty:
        return None
    ratio = flagged.n / (flagged.d_a + flagged.d_b)
    worst = flagged.loc[ratio.idxmin()]
    return (f"{len(flagged)} of {len(rows)} layer pairs underdetermined (n < {POINTS_PER_FEATURE} (d_a + d_b)); "
            f"worst n / (d_a + d_b) = {ratio.min():.2f} ({worst.layer_a} vs {worst.layer_b}: {worst.n} points for "
            f"{worst.d_a} + {worst.d_b} features); each pair in the rows' n, d_a, d_b and under --verbose")


def cca_rows(model_a: nn.Module, model_b: nn.Module, inputs: Tensor,
             transform: Callable[[Tensor], Tensor] | None = None, batch_size: int = 500,
             layers_a: Sequence[str] | None = None, layers_b: Sequence[str] | None = None, measure: str = "svcca",
             conv: str = "positions", pool_to: int | None = 8, max_points: int | None = 20_000, seed: int = 0,
             dtype: torch.dtype = torch.float64, permutations: int = PERMUTATIONS) -> pd.DataFrame:
    """`layer_similarity` rows of two models over the same inputs (layers default to each model's
    probe_layers), computed on model_a's device."""
    layers_a, layers_b = layers_a or model_a.probe_layers, layers_b or model_b.probe_layers
    acts_a = capture(model_a, layers_a, inputs, batch_size, transform, pool_to)
    acts_b = capture(model_b, layers_b, inputs, batch_size, transform, pool_to)
    return layer_similarity(acts_a, acts_b, measure, conv, max_points, seed, device_of(model_a), dtype, permutations)
