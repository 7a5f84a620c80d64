"""Freezing layer groups for the first N iterations (closer look, sec. 4: FC freeze instead of warmup)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from harness.config import FreezeCfg
from harness.models import group_params
from harness.schedules import to_iters


class Freezer:
    """Drops the gradients of frozen groups before the optimizer step.

    Dropping `.grad` (rather than toggling requires_grad) leaves the DDP graph intact and
    makes SGD and Adam skip the parameter entirely, weight decay and momentum included,
    so frozen weights stay bit-identical.
    """

    def __init__(self, cfg: FreezeCfg, model: nn.Module, spe: int, params: Optional[dict[str, Tensor]] = None):
        """`params`: the tensors to freeze by `model`'s parameter names (default: `model`'s own; a stack of
        models passes its stacked weights, harness/stacked_engine.py)."""
        params = dict(model.named_parameters()) if params is None else params
        self.params = [params[n] for n, _ in group_params(model, cfg.groups)] if cfg.groups else []
        self.until = to_iters(cfg.length, cfg.unit, spe)

    def frozen(self, iteration: int) -> bool:
        return bool(self.params) and iteration < self.until

    def apply(self, iteration: int) -> None:
        if self.frozen(iteration):
            for p in self.params:
                p.grad = None
