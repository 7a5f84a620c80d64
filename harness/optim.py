"""Optimizers by YAML name: SGD, Adam, GI-Adam and projected SGD on the unit sphere."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from harness.registry import PluginError, register

if TYPE_CHECKING:
    from harness.config import OptimCfg


class GIAdam(torch.optim.Optimizer):
    """Adam whose second moment starts at the first gradient squared (Kalra & Barkeshli 2024).

    With v_0 = g_0^2 the early steps are already normalised by a gradient-scale
    denominator, which is what warmup otherwise provides; v needs no bias correction
    (it is never biased toward 0), m keeps Adam's.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = g * g
                st["step"] += 1
                st["m"].mul_(b1).add_(g, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = st["m"] / (1 - b1 ** st["step"])
                p.addcdiv_(m_hat, st["v"].sqrt().add_(group["eps"]), value=-group["lr"])


class SphereSGD(torch.optim.Optimizer):
    """Projected SGD on the unit sphere of all trainable weights jointly (Kodryan et al. 2022).

    The weights are scaled to unit total norm at construction; each step moves along the
    gradient projected onto the tangent space, then retracts onto the sphere. For a
    scale-invariant net the LR is then the effective LR (ELR) and stays fixed.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum))
        self._renormalize()

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def _renormalize(self):
        ps = self._params()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p, dtype=torch.float64) for p in ps]))
        for p in ps:
            p.div_(norm.to(p.dtype))

    @torch.no_grad()
    def step(self, closure=None):
        ps = [p for p in self._params() if p.grad is not None]
        inner = sum((p * p.grad).sum() for p in ps)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad - inner * p  # tangent component (w has unit norm)
                if group["momentum"]:
                    buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                    d = buf.mul_(group["momentum"]).add_(d)
                p.sub_(d, alpha=group["lr"])
        self._renormalize()


@register.optimizer("sgd")
def sgd(c: OptimCfg, params: list[nn.Parameter]) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)


@register.optimizer("adam")
def adam(c: OptimCfg, params: list[nn.Parameter]) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)


@register.optimizer("gi_adam")
def gi_adam(c: OptimCfg, params: list[nn.Parameter]) -> GIAdam:
    return GIAdam(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)


@register.optimizer("sphere_sgd")
def sphere_sgd(c: OptimCfg, params: list[nn.Parameter]) -> SphereSGD:
    return SphereSGD(params, lr=c.lr, momentum=c.momentum)


def build(cfg: OptimCfg, model: nn.Module, groups: Optional[list[list[nn.Parameter]]] = None) \
        -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters: one param group, or `groups` (lists of
    parameters, one param group each; heuristics.lr_groups). An optimizer plug-in is any factory (cfg, params) ->
    torch.optim.Optimizer, where params is a list of tensors or of param-group dicts; its result is checked."""
    entry = register.get("optimizer", cfg.name)
    params = [p for p in model.parameters() if p.requires_grad] if groups is None else \
        [{"params": g} for g in groups]
    opt = entry.obj(cfg, params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise PluginError(f"optimizer {entry.name!r} ({entry.module}): built a {type(opt).__name__}; an optimizer "
                          f"factory must return a torch.optim.Optimizer")
    return opt


def set_lr(opt: torch.optim.Optimizer, lrs: float | list[float]) -> None:
    """Every param group's LR: one for all, or one per group."""
    for g, lr in zip(opt.param_groups, lrs if isinstance(lrs, list) else [lrs] * len(opt.param_groups)):
        g["lr"] = lr
