"""Sharpness of the training loss: top Hessian eigenvalue (Lanczos or power iteration), Hutchinson trace.

Everything works through Hessian-vector products (Pearlmutter 1994) of the mean loss over a
fixed batch set with dropout off, so the Hessian is that of one deterministic function of the weights.
`bn` says which function: "running" (eval mode: BN uses its running statistics) or "batch" (BN normalises
each batch by its own statistics, as in the training loss SGD follows; the 2 / eta stability limit is
about that loss, and with BN the two Hessians can differ by a large factor).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterator, Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.evaluation import Batches, LossFn, batchnorms, device_of, restored, update_bn
from analysis.loading import build_model
from analysis.progress import Progress

log = logging.getLogger("heurbench.analysis")
BN_MODES = ("running", "batch")


def hessian_vector_product(model: nn.Module, batches: Batches,
                           loss_fn: LossFn = F.cross_entropy) -> Callable[[Tensor], Tensor]:
    """v -> H v for the mean loss over `batches`, H the Hessian w.r.t. the trainable parameters (flattened)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device = device_of(model)

    def hvp(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for x, y in batches.iterate(device):
            loss = loss_fn(model(x), y) * (len(y) / len(batches))
            grads = torch.autograd.grad(loss, params, create_graph=True)
            flat = torch.cat([g.reshape(-1) for g in grads])
            out += torch.cat([h.reshape(-1) for h in torch.autograd.grad(flat @ v, params)])
        return out

    return hvp


def _trainable(model: nn.Module) -> Tensor:
    """An empty tensor with the size, dtype and device of the flattened trainable weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)


@contextlib.contextmanager
def _fixed_loss(model: nn.Module, batches: Batches, bn: str) -> Iterator[nn.Module]:
    """The model with dropout off and BN as `bn` says (module docstring), given back as it was after."""
    if bn not in BN_MODES:
        raise ValueError(f"bn: expected one of {', '.join(BN_MODES)}, got {bn!r}")
    with restored(model):
        model.eval()
        for m in batchnorms(model, batches) if bn == "batch" else ():
            m.train()
        yield model


ITERS, TOL = 100, 1e-4  # defaults: within 1e-8 of the exact top eigenvalue on the nets of tests/test_sharpness.py


def top_eigenvalue(model: nn.Module, batches: Batches, method: str = "lanczos", iters: int = ITERS,
                   tol: float = TOL, seed: int = 0, loss_fn: LossFn = F.cross_entropy, bn: str = "running") -> float:
    """Largest Hessian eigenvalue of the training loss over `batches`, from a seeded random start.

    "lanczos" (the largest algebraic eigenvalue): Lanczos with full reorthogonalisation, stopped when the
    top Ritz pair (theta, y) has residual ||H y - theta y|| = beta_j |s_j| <= tol |theta| (Parlett 1998,
    sec. 13.2; theta is then within tol |theta| of an eigenvalue), or after `iters` Hessian-vector products
    (a warning says it did not converge). The consecutive change of theta is no test: it stalls for a few
    steps far (4%) from the answer. Memory: iters x the number of weights. "power": power iteration until
    the Rayleigh quotient changes by < tol (relative); it finds the eigenvalue of largest magnitude.
    """
    if method not in ("lanczos", "power"):
        raise ValueError(f"unknown method {method!r}; expected 'lanczos' or 'power'")
    with _fixed_loss(model, batches, bn):
        hvp, like = hessian_vector_product(model, batches, loss_fn), _trainable(model)
        v = torch.randn(like.numel(), generator=torch.Generator().manual_seed(seed)).to(like)
        v /= v.norm()
        return _lanczos(hvp, v, min(iters, like.numel()), tol) if method == "lanczos" else _power(hvp, v, iters, tol)


def _power(hvp: Callable[[Tensor], Tensor], v: Tensor, iters: int, tol: float) -> float:
    value = math.nan
    progress = Progress(iters, "power iteration")
    for _ in range(iters):
        hv = hvp(v)
        new = float(v @ hv)
        progress.step()
        if abs(new - value) <= tol * abs(new) or float(hv.norm()) == 0:
            return new
        value, v = new, hv / hv.norm()
    return value


def _lanczos(hvp: Callable[[Tensor], Tensor], v: Tensor, iters: int, tol: float) -> float:
    basis = torch.empty(iters, v.numel(), dtype=v.dtype, device=v.device)
    basis[0] = v
    alphas, betas = [], []
    progress = Progress(iters, "Lanczos")
    for j in range(iters):
        w = hvp(basis[j])
        alphas.append(float(w @ basis[j]))
        for _ in range(2):  # full reorthogonalisation; twice is enough (Parlett's "twice is enough")
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        progress.step()
        beta = float(w.norm())
        off = torch.tensor(betas, dtype=torch.float64)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64)) + torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(t)
        theta, residual = float(values[-1]), beta * float(vectors[-1, -1].abs())
        if residual <= tol * abs(theta) or beta <= 1e-10 * max(abs(a) for a in alphas):  # or Krylov space exhausted
            return theta
        if j < iters - 1:
            betas.append(beta)
            basis[j + 1] = w / beta
    log.warning("Lanczos: no convergence in %d iterations: top Ritz value %.6g has residual %.2g > tol x value = %.2g",
                iters, theta, residual, tol * abs(theta))
    return theta


def hutchinson_trace(model: nn.Module, batches: Batches, probes: int = 100, seed: int = 0,
                     loss_fn: LossFn = F.cross_entropy, bn: str = "running") -> tuple[float, float]:
    """Hutchinson estimate of tr(H) with Rademacher probes: (mean of v^T H v, its standard error)."""
    with _fixed_loss(model, batches, bn):
        hvp, like = hessian_vector_product(model, batches, loss_fn), _trainable(model)
        generator = torch.Generator().manual_seed(seed)
        samples = []
        progress = Progress(probes, "Hutchinson probes")
        for _ in range(probes):
            v = (torch.randint(0, 2, (like.numel(),), generator=generator) * 2 - 1).to(like)
            samples.append(float(v @ hvp(v)))
            progress.step()
    values = torch.tensor(samples, dtype=torch.float64)
    stderr = float(values.std() / math.sqrt(probes)) if probes > 1 else math.inf
    return float(values.mean()), stderr


def _number(ckpt: dict[str, Any], key: str) -> float:
    value = ckpt.get(key)
    return math.nan if value is None else float(value)


def sharpness(ckpts: Mapping[str, dict[str, Any]], train: Batches, method: str = "lanczos", iters: int = ITERS,
              tol: float = TOL, probes: int = 0, seed: int = 0, device: str | torch.device = "cpu",
              bn: str = "running") -> pd.DataFrame:
    """Per checkpoint (id -> dict), for bn "running" BN statistics first recomputed on `train` (stored ones may be
    stale, the defaults at iteration 0): rows ckpt, epoch, iteration, top_eigenvalue (`top_eigenvalue` with iters,
    tol, bn; and trace, trace_stderr if probes)."""
    rows, progress = [], Progress(len(ckpts), "sharpness: checkpoints", every_s=30.0)
    for ckpt_id, ckpt in ckpts.items():
        model = build_model(ckpt, ckpt_id, device)
        if bn == "running":  # batch mode never reads them
            update_bn(model, train)
        row = {"ckpt": ckpt_id, "epoch": _number(ckpt, "epoch"), "iteration": _number(ckpt, "iteration"),
               "top_eigenvalue": top_eigenvalue(model, train, method, iters, tol, seed, bn=bn)}
        if probes:
            row["trace"], row["trace_stderr"] = hutchinson_trace(model, train, probes, seed, bn=bn)
        rows.append(row)
        progress.step()
    return pd.DataFrame(rows)
