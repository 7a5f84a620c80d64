"""Sharpness of the training loss: top Hessian eigenvalue (Lanczos or power iteration), Hutchinson trace.

Everything works through Hessian-vector products (Pearlmutter 1994) of the mean loss over a
fixed batch set with dropout off, so the Hessian is that of one deterministic function of the weights.
`bn` says which function: "running" (eval mode: BN uses its running statistics) or "batch" (BN normalises
each batch by its own statistics, as in the training loss SGD follows; the 2 / eta stability limit is
about that loss, and with BN the two Hessians can differ by a large factor).
`sharpness` runs K checkpoints of one architecture as one stack (torch.func): each Hessian-vector product is
one vmapped pass for all K, and Lanczos, power iteration and Hutchinson run for the K in lockstep.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
from typing import Any, Callable, Iterator, Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, replace_all_batch_norm_modules_, stack_module_state, vmap

from analysis.evaluation import Batches, LossFn, batchnorms, device_of, restored, update_bn
from analysis.loading import build_model
from analysis.progress import Progress

log = logging.getLogger("heurbench.analysis")
BN_MODES = ("running", "batch")
StackedHvp = Callable[[Tensor, Tensor], Tensor]  # (models idx [k], vectors [k, P]) -> H_i v_i for each i, [k, P]


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


def stacked_hessian_vector_product(models: list[nn.Module], batches: Batches, loss_fn: LossFn = F.cross_entropy,
                                   bn: str = "running") -> tuple[StackedHvp, Tensor]:
    """For K models of one architecture: (hvp, their trainable weights [K, P]); hvp(idx, V) is
    `hessian_vector_product` of models idx, from one vmapped forward of them all (functional_call).

    The members are independent, so the gradient of their summed losses w.r.t. the stacked weights is each one's
    own gradient, and one more backward of it against V gives each H_i v_i. The gradient graph of the last batch
    is kept: with one batch (as in the studies) a product costs only that second backward, about half of a
    `hessian_vector_product`. Dropout is off (eval mode). bn "running": BN reads each model's own running
    statistics. bn "batch": the skeleton's BN layers lose their running statistics
    (`replace_all_batch_norm_modules_`), so they normalise by the batch's own and update nothing, which a vmapped
    forward could not write into the models' buffers anyway.
    """
    skeleton = _skeleton(models[0], bn)
    params, buffers = stack_module_state(models)
    names = [n for n, p in models[0].named_parameters() if p.requires_grad]
    shapes = [params[n].shape[1:] for n in names]
    weights = torch.cat([params.pop(n).detach().flatten(1) for n in names], 1)
    fixed = {**{n: p.detach() for n, p in params.items()}, **{n: buffers[n] for n, _ in skeleton.named_buffers()}}
    device, last = weights.device, {}

    def logits(w: Tensor, rest: dict[str, Tensor], x: Tensor) -> Tensor:
        tensors = {n: t.view(s) for n, t, s in zip(names, w.split([s.numel() for s in shapes]), shapes)}
        return functional_call(skeleton, {**tensors, **rest}, (x,))

    forward, losses = vmap(logits, in_dims=(0, 0, None)), vmap(loss_fn, in_dims=(0, None))

    def gradient(idx: Tensor, batch: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Models idx's weights (a leaf) and their gradients on this batch with its graph, kept for the next call."""
        key = (tuple(idx.tolist()), batch)
        if last.get("key") != key:
            last.clear()  # the old graph goes before the new one is built
            w = weights[idx].requires_grad_()
            loss = losses(forward(w, {n: t[idx] for n, t in fixed.items()}, x), y).sum() * (len(y) / len(batches))
            last.update(key=key, w=w, g=torch.autograd.grad(loss, w, create_graph=True)[0])
        return last["w"], last["g"]

    def hvp(idx: Tensor, v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for batch, (x, y) in enumerate(batches.iterate(device)):
            w, g = gradient(idx, batch, x, y)
            out += torch.autograd.grad(g, w, v, retain_graph=True)[0]
        return out

    return hvp, weights


def _skeleton(model: nn.Module, bn: str) -> nn.Module:
    """A weightless (meta) copy of `model` computing the loss `bn` names, for functional_call."""
    _check_bn(bn)
    skeleton = copy.deepcopy(model).to("meta").eval()
    return replace_all_batch_norm_modules_(skeleton) if bn == "batch" else skeleton


def _check_bn(bn: str) -> None:
    if bn not in BN_MODES:
        raise ValueError(f"bn: expected one of {', '.join(BN_MODES)}, got {bn!r}")


def _trainable(model: nn.Module) -> Tensor:
    """An empty tensor with the size, dtype and device of the flattened trainable weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)


@contextlib.contextmanager
def _fixed_loss(model: nn.Module, batches: Batches, bn: str) -> Iterator[nn.Module]:
    """The model with dropout off and BN as `bn` says (module docstring), given back as it was after."""
    _check_bn(bn)
    with restored(model):
        model.eval()
        for m in batchnorms(model, batches) if bn == "batch" else ():
            m.train()
        yield model


def _single(hvp: Callable[[Tensor], Tensor]) -> StackedHvp:
    """One model's hvp as a stack of one."""
    return lambda idx, v: hvp(v[0])[None]


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
    _check_method(method)
    with _fixed_loss(model, batches, bn):
        hvp, like = hessian_vector_product(model, batches, loss_fn), _trainable(model)
        return _top(_single(hvp), like[None], method, iters, tol, seed)[0]


def _check_method(method: str) -> None:
    if method not in ("lanczos", "power"):
        raise ValueError(f"unknown method {method!r}; expected 'lanczos' or 'power'")


def _top(hvp: StackedHvp, like: Tensor, method: str, iters: int, tol: float, seed: int) -> list[float]:
    """`top_eigenvalue` by `method` for the K models of `hvp` (like: [K, P]), each from the same seeded start."""
    v = torch.randn(like.shape[1], generator=torch.Generator().manual_seed(seed)).to(like)
    v = (v / v.norm()).expand_as(like)
    return _lanczos(hvp, v, min(iters, like.shape[1]), tol) if method == "lanczos" else _power(hvp, v, iters, tol)


def _power(hvp: StackedHvp, v: Tensor, iters: int, tol: float) -> list[float]:
    """Power iteration for K models in lockstep from v [K, P]; each stops on its own (`top_eigenvalue`)."""
    out = torch.full((len(v),), math.nan, dtype=torch.float64)
    idx, value = torch.arange(len(v)), out.clone()
    progress = Progress(iters, "power iteration")
    for _ in range(iters):
        hv = hvp(idx, v)
        new, norm = (v * hv).sum(1).double().cpu(), hv.norm(dim=1)
        out[idx] = new
        progress.step()
        going = ~(((new - value).abs() <= tol * new.abs()) | (norm == 0).cpu())
        if not going.any():
            break
        idx, value, v = idx[going], new[going], hv[going.to(hv.device)] / norm[going.to(hv.device), None]
    return out.tolist()


def _lanczos(hvp: StackedHvp, v: Tensor, iters: int, tol: float) -> list[float]:
    """Lanczos (`top_eigenvalue`) for K models in lockstep from v [K, P]: each stops by its own residual or
    Krylov exhaustion and keeps its top Ritz value; the models still running are compacted (basis included)."""
    K, P = v.shape
    basis = v.new_empty(K, iters, P)
    basis[:, 0] = v
    alphas, betas = torch.zeros(K, iters, dtype=torch.float64), torch.zeros(K, iters, dtype=torch.float64)
    out, idx = torch.full((K,), math.nan, dtype=torch.float64), torch.arange(K)
    progress = Progress(iters, "Lanczos")
    for j in range(iters):
        w = hvp(idx, basis[:, j])
        alphas[:, j] = (w * basis[:, j]).sum(1).double().cpu()
        for _ in range(2):  # full reorthogonalisation; twice is enough (Parlett's "twice is enough")
            w -= (basis[:, : j + 1].transpose(1, 2) @ (basis[:, : j + 1] @ w[:, :, None]))[:, :, 0]
        progress.step()
        beta = w.norm(dim=1).double().cpu()
        off = betas[:, :j]
        t = torch.diag_embed(alphas[:, : j + 1]) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        values, vectors = torch.linalg.eigh(t)
        theta, residual = values[:, -1], beta * vectors[:, -1, -1].abs()
        out[idx] = theta
        going = (residual > tol * theta.abs()) & (beta > 1e-10 * alphas[:, : j + 1].abs().amax(1))  # else exhausted
        if not going.any() or j == iters - 1:
            break
        if not going.all():
            idx, basis, alphas, betas, w, beta = (a[going.to(a.device)] for a in (idx, basis, alphas, betas, w, beta))
        betas[:, j] = beta
        basis[:, j + 1] = w / beta.to(w)[:, None]
    for value, r in zip(theta[going].tolist(), residual[going].tolist()):
        log.warning("Lanczos: no convergence in %d iterations: top Ritz value %.6g has residual %.2g > tol x value = "
                    "%.2g", iters, value, r, tol * abs(value))
    return out.tolist()


def hutchinson_trace(model: nn.Module, batches: Batches, probes: int = 100, seed: int = 0,
                     loss_fn: LossFn = F.cross_entropy, bn: str = "running") -> tuple[float, float]:
    """Hutchinson estimate of tr(H) with Rademacher probes: (mean of v^T H v, its standard error)."""
    with _fixed_loss(model, batches, bn):
        return _hutchinson(_single(hessian_vector_product(model, batches, loss_fn)), _trainable(model)[None],
                           probes, seed)[0]


def _hutchinson(hvp: StackedHvp, like: Tensor, probes: int, seed: int) -> list[tuple[float, float]]:
    """`hutchinson_trace` for the K models of `hvp` (like: [K, P]), the same seeded probes for each."""
    generator, idx = torch.Generator().manual_seed(seed), torch.arange(len(like))
    samples = []
    progress = Progress(probes, "Hutchinson probes")
    for _ in range(probes):
        v = (torch.randint(0, 2, (like.shape[1],), generator=generator) * 2 - 1).to(like).expand_as(like)
        samples.append((v * hvp(idx, v)).sum(1).double().cpu())
        progress.step()
    values = torch.stack(samples, 1)
    stderr = values.std(1) / math.sqrt(probes) if probes > 1 else torch.full((len(like),), math.inf)
    return list(zip(values.mean(1).tolist(), stderr.tolist()))


def _number(ckpt: dict[str, Any], key: str) -> float:
    value = ckpt.get(key)
    return math.nan if value is None else float(value)


MAX_STACK = 16  # models per pass at most (the bound the stack was asked for; not tuned)


def models_per_pass(ckpt: dict[str, Any], iters: int, device: torch.device) -> int:
    """Checkpoints of `ckpt`'s architecture per stacked pass: on a GPU at most MAX_STACK, with their Lanczos bases
    (iters x the weights each) in a quarter of its free memory; on a CPU one (there the stack is no faster: S6's
    ResNet-18/8 with batch BN on 200 images on 2 cores took 8.5 s per checkpoint one at a time, 9.4 s in a stack
    of 4 and about 15 s in a stack of 16, 2026-12-07)."""
    if device.type != "cuda":
        return 1
    free = torch.cuda.mem_get_info(device)[0]
    weights = sum(t.numel() * t.element_size() for t in ckpt["model"].values())  # buffers too: an upper bound
    return int(max(1, min(MAX_STACK, free // 4 // (iters * weights))))


def by_architecture(ckpts: Mapping[str, dict[str, Any]]) -> list[list[str]]:
    """Checkpoint ids grouped by model spec (so by parameter shapes), in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for ckpt_id, ckpt in ckpts.items():
        groups.setdefault(json.dumps(ckpt["model_spec"], sort_keys=True, default=str), []).append(ckpt_id)
    return list(groups.values())


def sharpness(ckpts: Mapping[str, dict[str, Any]], train: Batches, method: str = "lanczos", iters: int = ITERS,
              tol: float = TOL, probes: int = 0, seed: int = 0, device: str | torch.device = "cpu",
              bn: str = "running", stack: int | None = None) -> pd.DataFrame:
    """Per checkpoint (id -> dict), for bn "running" BN statistics first recomputed on `train` (stored ones may be
    stale, the defaults at iteration 0): rows ckpt, epoch, iteration, top_eigenvalue (`top_eigenvalue` with iters,
    tol, bn; and trace, trace_stderr if probes), in the order of `ckpts`. Checkpoints of one architecture run
    `stack` at a time (default `models_per_pass`) as one stack (`stacked_hessian_vector_product`)."""
    _check_method(method)
    _check_bn(bn)
    device = torch.device(device)
    rows, progress = {}, Progress(len(ckpts), "sharpness: checkpoints", every_s=30.0)
    for ids in by_architecture(ckpts):
        per_pass = stack or models_per_pass(ckpts[ids[0]], iters, device)
        for i in range(0, len(ids), per_pass):
            chunk = {c: ckpts[c] for c in ids[i : i + per_pass]}
            rows.update(_stack_rows(chunk, train, method, iters, tol, probes, seed, device, bn))
            progress.step(len(chunk))
    return pd.DataFrame([rows[c] for c in ckpts])


def _stack_rows(ckpts: dict[str, dict[str, Any]], train: Batches, method: str, iters: int, tol: float, probes: int,
                seed: int, device: torch.device, bn: str) -> dict[str, dict[str, Any]]:
    """`sharpness` rows of checkpoints of one architecture, computed as one stack."""
    models = [build_model(ckpt, ckpt_id, device) for ckpt_id, ckpt in ckpts.items()]
    for model in models if bn == "running" else ():  # batch mode never reads them
        update_bn(model, train)
    hvp, weights = stacked_hessian_vector_product(models, train, bn=bn)
    rows = {ckpt_id: {"ckpt": ckpt_id, "epoch": _number(ckpt, "epoch"), "iteration": _number(ckpt, "iteration"),
                      "top_eigenvalue": value}
            for (ckpt_id, ckpt), value in zip(ckpts.items(), _top(hvp, weights, method, iters, tol, seed))}
    for row, (trace, stderr) in zip(rows.values(), _hutchinson(hvp, weights, probes, seed) if probes else ()):
        row["trace"], row["trace_stderr"] = trace, stderr
    return rows
