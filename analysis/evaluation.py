"""Shared evaluation pieces: fixed batches, loss/accuracy, BN recomputation, flat weight vectors.

Curves, planes, interpolation, SWA and frequency probes all evaluate a model at some
weight vector; they do it through these functions so BN handling is identical everywhere.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers whose running statistics matter in eval mode."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def update_bn(model: nn.Module, batches: Batches | None) -> None:
    """Recompute BN running statistics: reset, then a batch-size-weighted cumulative average over `batches`.

    Required at every point of a curve or plane and after SWA (Garipov et al. 2018, sec. 4;
    Izmailov et al. 2018, sec. 3.2; momentum b/(seen+b) as in their code, so the mean is the
    exact data mean even with an uneven last batch). A model without BN is left untouched.
    """
    bns = batchnorms(model)
    if not bns:
        return
    if batches is None:
        raise ValueError("the model has BatchNorm layers: pass train batches to recompute their statistics")
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
    model.train()
    seen = 0
    with torch.no_grad():
        for x, _ in batches.iterate(device_of(model)):
            for m in bns:
                m.momentum = x.shape[0] / (seen + x.shape[0])
            model(x)
            seen += x.shape[0]
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.train(was_training)


def param_vector(model: nn.Module, state: dict[str, Tensor] | None = None) -> Tensor:
    """All parameters (not buffers) as one flat vector on the model's device and dtype, from `state` or the model."""
    named = dict(model.named_parameters())
    source = named if state is None else state
    like = next(iter(named.values()))
    return torch.cat([source[n].detach().reshape(-1).to(like) for n in named])


def unflatten(model: nn.Module, vector: Tensor) -> dict[str, Tensor]:
    """Split a flat vector into tensors shaped like the model's parameters (views, autograd kept)."""
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = vector[i : i + p.numel()].view_as(p)
        i += p.numel()
    if i != vector.numel():
        raise ValueError(f"weight vector has {vector.numel()} entries; the model has {i} parameters")
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


def evaluate_at(model: nn.Module, vector: Tensor, splits: dict[str, Batches], bn_batches: Batches | None,
                loss_fn: LossFn = F.cross_entropy) -> list[dict]:
    """Load `vector`, recompute BN statistics, then loss/accuracy per split: one row per split."""
    load_vector(model, vector)
    update_bn(model, bn_batches)
    return [{"split": name, **evaluate(model, b, loss_fn)} for name, b in splits.items()]
