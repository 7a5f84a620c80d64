"""Freezing layer groups for the first N iterations (closer look, sec. 4: FC freeze instead of warmup)."""
from __future__ import annotations

from harness.config import FreezeCfg
from harness.heuristics import Heuristic
from harness.registry import register
from harness.schedules import to_iters


@register.heuristic("freeze", options=FreezeCfg)
class Freeze(Heuristic):
    """`groups` skip their updates for iterations [0, length). The engines drop those parameters' gradients
    (rather than toggling requires_grad), which leaves the DDP graph intact and makes SGD and Adam skip them
    entirely, weight decay and momentum included, so frozen weights stay bit-identical."""

    @classmethod
    def active(cls, options: FreezeCfg) -> bool:
        return bool(options.groups) and options.length > 0

    def frozen(self, it: int) -> list[str]:
        return self.options.groups if it < to_iters(self.options.length, self.options.unit, self.ctx.spe) else []
