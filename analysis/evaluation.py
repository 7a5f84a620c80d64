"""Shared evaluation pieces: fixed batches, loss/accuracy, BN recomputation, flat weight vectors.

Curves, planes, interpolation, SWA and frequency probes all evaluate a model at some
weight vector; they do it through these functions so BN handling is identical everywhere.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from analysis.progress import Progress

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Batches:
    """Inputs and labels served in fixed-order batches on a device; `transform` runs per batch there.

    `transform` is typically `Dataset.normalize` (uint8 -> standardised float), so data can
    stay uint8 on the CPU and only one batch at a time is converted on the device.
    """

    inputs: Tensor
    labels: Tensor
    batch_size: int = 500
    transform: Callable[[Tensor], Tensor] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _prepare(self, index: slice | Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        x = self.inputs[index].to(device, non_blocking=True)
        return (self.transform(x) if self.transform else x), self.labels[index].to(device, non_blocking=True)

    def iterate(self, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        """All examples in order, one batch at a time."""
        for i in range(0, len(self), self.batch_size):
            yield self._prepare(slice(i, i + self.batch_size), device)

    def sample(self, device: torch.device, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """One batch drawn without replacement from the whole set."""
        idx = torch.randperm(len(self), generator=generator)[: self.batch_size]
        return self._prepare(idx, device)

    def head(self, n: int | None) -> "Batches":
        """The first n examples (all when n is None)."""
        return self if n is None else Batches(self.inputs[:n], self.labels[:n], self.batch_size, self.transform)


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    return next(model.parameters(), torch.empty(0)).device


def evaluate(model: nn.Module, batches: Batches, loss_fn: LossFn = F.cross_entropy) -> dict[str, float]:
    """Mean loss and accuracy over all batches, in eval mode and without autograd."""
    device, was_training = device_of(model), model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for x, y in batches.iterate(device):
            out = model(x)
            loss_sum += float(loss_fn(out, y)) * len(y)
            correct += int((out.argmax(1) == y).sum())
    model.train(was_training)
    return {"loss": loss_sum / len(batches), "accuracy": correct / len(batches)}


def batchnorms(model: nn.Module, batches: Batches | None) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers whose running statistics matter in eval mode, to be recomputed on `batches`
    (a ValueError if there are some and no batches)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if bns and batches is None:
        raise ValueError("the model has BatchNorm layers: pass train batches to recompute their statistics")
    return bns


def update_bn(model: nn.Module, batches: Batches | None) -> None:
    """Recompute BN running statistics: reset, then a batch-size-weighted cumulative average over `batches`.

    Required at every point of a curve or plane and after SWA (Garipov et al. 2018, sec. 4;
    Izmailov et al. 2018, sec. 3.2; momentum b/(seen+b) as in their code, so the mean is the
    exact data mean even with an uneven last batch). A model without BN is left untouched.
    """
    bns = batchnorms(model, batches)
    if not bns:
        return
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
    model.train()
    with torch.no_grad():
        cumulative_bn(bns, batches, device_of(model), model)
    model.train(was_training)


def cumulative_bn(bns: list, batches: Batches, device: torch.device, forward: Callable[[Tensor], object]) -> None:
    """Run `forward` (train mode) over every batch with BN momentum b / (seen + b): reset statistics become
    the exact batch-size-weighted data mean. The layers' own momenta are put back afterwards."""
    momenta = [m.momentum for m in bns]
    seen = 0
    try:
        for x, _ in batches.iterate(device):
            for m in bns:
                m.momentum = x.shape[0] / (seen + x.shape[0])
            forward(x)
            seen += x.shape[0]
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum


def param_vector(model: nn.Module, state: dict[str, Tensor] | None = None) -> Tensor:
    """All parameters (not buffers) as one flat vector on the model's device and dtype, from `state` or the model."""
    named = dict(model.named_parameters())
    source = named if state is None else state
    like = next(iter(named.values()))
    return torch.cat([source[n].detach().reshape(-1).to(like) for n in named])


def unflatten(model: nn.Module, vector: Tensor) -> dict[str, Tensor]:
    """Split a flat vector [P] (or a stack of them, [G, P]) into tensors shaped like the model's parameters
    ([G, *shape] for a stack; views, autograd kept)."""
    out, i, lead = {}, 0, vector.shape[:-1]
    for name, p in model.named_parameters():
        out[name] = vector[..., i : i + p.numel()].view(*lead, *p.shape)
        i += p.numel()
    if i != vector.shape[-1]:
        raise ValueError(f"weight vector has {vector.shape[-1]} entries; the model has {i} parameters")
    return out


def load_vector(model: nn.Module, vector: Tensor) -> None:
    """Copy a flat weight vector into the model's parameters in place."""
    with torch.no_grad():
        for p, v in zip(model.parameters(), unflatten(model, vector).values()):
            p.copy_(v)


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[nn.Module]:
    """Give the model back with its original weights, buffers and mode after the block."""
    state, was_training = copy.deepcopy(model.state_dict()), model.training
    try:
        yield model
    finally:
        model.load_state_dict(state)
        model.train(was_training)


def points_per_pass(device: torch.device) -> int:
    """Weight vectors evaluated together: on a GPU one small model at a time leaves it mostly idle."""
    return 8 if device.type == "cuda" else 1


def evaluate_points(model: nn.Module, vectors: Iterable[Tensor], splits: dict[str, Batches],
                    bn_batches: Batches | None, loss_fn: LossFn = F.cross_entropy, stack: int | None = None,
                    progress: Progress | None = None) -> list[list[dict]]:
    """Per weight vector: BN statistics recomputed as `update_bn` does, then loss/accuracy per split (one
    row per split). `stack` vectors at a time (default `points_per_pass`) run as one vmapped stack of
    models, so each batch is one forward for all of them; `vectors` is consumed lazily, `stack` at a
    time. The model's own state is left as it was."""
    device, bns = device_of(model), batchnorms(model, bn_batches)
    vectors, stack, out = iter(vectors), stack or points_per_pass(device), []
    with restored(model), torch.no_grad():
        while chunk := list(itertools.islice(vectors, stack)):
            out += _evaluate_stack(model, bns, torch.stack([v.to(device, torch.float32) for v in chunk]), splits,
                                   bn_batches, loss_fn)
            if progress:
                progress.step(len(chunk))
    return out


def _evaluate_stack(model: nn.Module, bns: list, vectors: Tensor, splits: dict[str, Batches],
                    bn_batches: Batches | None, loss_fn: LossFn) -> list[list[dict]]:
    """`evaluate_points` for G vectors [G, P] at once (inside `restored` and no_grad)."""
    G, device = len(vectors), vectors.device
    params = unflatten(model, vectors)
    for m in bns:
        m.reset_running_stats()
    buffers = {k: b.expand(G, *b.shape).clone() for k, b in model.named_buffers()}
    shared = vmap(lambda p, b, x: functional_call(model, (p, b), (x,)), in_dims=(0, 0, None),
                  randomness="different")
    if bns:
        model.train()
        cumulative_bn(bns, bn_batches, device, lambda x: shared(params, buffers, x))
    model.eval()
    rows: list[list[dict]] = [[] for _ in range(G)]
    for name, batches in splits.items():
        sums = torch.zeros(G, 2, dtype=torch.float64, device=device)  # summed loss, correct
        for x, y in batches.iterate(device):
            out = shared(params, buffers, x)
            sums[:, 0] += torch.stack([loss_fn(o, y) for o in out]).double() * len(y)
            sums[:, 1] += (out.argmax(-1) == y).sum(1)
        for r, (loss, correct) in zip(rows, (sums / len(batches)).tolist()):
            r.append({"split": name, "loss": loss, "accuracy": correct})
    return rows
