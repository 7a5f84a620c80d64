"""Warmup of one layer group only (by default the FC stack), the rest at the schedule's LR from the first step:
the hybrid of warmup and freezing that the closer-look paper (Gotmare et al. 2019, sec. 6) suggests, since what
warmup protects is the FC stack's early, unstably large changes."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from heurbench import Heuristic, Options, register


class GroupWarmupOptions(Options):
    group: str = Field("fc_stack", description="the layer group warmed up (model.layer_groups)")
    length: int = Field(gt=0, description="warmup length")
    unit: Literal["epoch", "iteration"] = "iteration"
    eta_init: float = Field(0.0, ge=0, description="the group's LR at iteration 0")


@register.heuristic("group_warmup", options=GroupWarmupOptions)
class GroupWarmup(Heuristic):
    """`heuristics: {group_warmup: {group: fc_stack, length: 5}}`: the group's LR rises linearly from eta_init to
    the schedule's over `length`; every other parameter follows the schedule."""

    def lr_groups(self) -> list[str]:
        return [self.options.group]

    def schedule(self, base, group):
        if group != self.options.group:
            return base
        o = self.options
        n = o.length * (self.ctx.spe if o.unit == "epoch" else 1)
        return lambda it: o.eta_init + (base(it) - o.eta_init) * it / n if it < n else base(it)
