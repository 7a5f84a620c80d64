"""LARS (You, Gitman & Ginsburg 2017, "Large batch training of convolutional networks"): SGD with momentum whose
step for each layer is scaled by a trust ratio, so that every layer moves by about the same fraction of its norm.

For each parameter tensor w with gradient g (weight decay beta folded in):
    local_lr = trust_coefficient * ||w|| / (||g|| + beta * ||w|| + eps)
    v <- momentum * v + lr * local_lr * (g + beta * w);   w <- w - v
Tensors of one dimension (biases, norm scales) get local_lr = 1 when `exclude_1d` (common practice since the
paper's reference code; the paper itself adapts every layer). lr is the global rate the schedule sets.
"""
from __future__ import annotations

import torch
from pydantic import Field

from heurbench import Options, register


class LarsOptions(Options):
    trust_coefficient: float = Field(0.001, gt=0, description="eta of You et al. (their 0.001)")
    exclude_1d: bool = Field(True, description="1-D tensors (biases, norm scales) take the plain SGD step")


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, exclude_1d: bool = True):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, eps=eps, exclude_1d=exclude_1d))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=beta) if beta else p.grad
                local = 1.0
                if p.ndim > 1 or not group["exclude_1d"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    ratio = group["trust_coefficient"] * w_norm / (g_norm + beta * w_norm + group["eps"])
                    local = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(g * local, alpha=group["lr"])
                p.sub_(buf)


@register.optimizer("lars", options=LarsOptions)
def lars(c, params) -> LARS:
    """`optim: {name: lars, lr, momentum, weight_decay, trust_coefficient, exclude_1d}` (eps: optim.eps)."""
    return LARS(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                trust_coefficient=c.trust_coefficient, eps=c.eps, exclude_1d=c.exclude_1d)
