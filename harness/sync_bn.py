"""Synchronised batch norm (`model.bn: sync`): in training, every BN layer normalises by the statistics of the
whole DDP batch, so a BN trial's numbers do not change with the number of ranks that share its batch.

`torch.nn.SyncBatchNorm` only runs on accelerators (it refuses CPU tensors, so gloo DDP could not use it); this
one runs on any backend. Per layer and step: one autograd-aware all-reduce of the per-channel
sums and the count (the global mean), one of the squared deviations from it (the global biased variance; two
passes, so no cancellation of E[x^2] - E[x]^2). Outside training, or in one process, it is `nn.BatchNorm2d`.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks, differentiable: the gradient of each rank's input is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose training-mode statistics (and running-statistics update) are the global batch's."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf, shape = x.float(), (1, -1, 1, 1)
        local = torch.cat([xf.sum((0, 2, 3)), xf.new_tensor([x.numel() / x.size(1)])])
        total = _AllReduceSum.apply(local)
        count = total[-1].detach()
        mean = total[:-1] / count
        var = _AllReduceSum.apply(((xf - mean.view(shape)) ** 2).sum((0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1), factor)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def synchronise(model: nn.Module) -> nn.Module:
    """`model` (on the CPU, before it moves to its device) with every `nn.BatchNorm2d` replaced, in place, by a
    `SyncBatchNorm2d` holding the same weights and statistics (state-dict keys unchanged: its checkpoints load
    into the plain model)."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            synchronise(child)
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any layer of `model` normalises by batch statistics in training."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
