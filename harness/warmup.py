"""Learning-rate warmup (Goyal et al. 2017; closer look, sec. 4): linear from eta_init to any schedule."""
from __future__ import annotations

from typing import Optional

from harness.config import WarmupCfg
from harness.heuristics import Heuristic
from harness.registry import register
from harness.schedules import LrFn, to_iters


def with_warmup(base: LrFn, warmup: WarmupCfg, eta_init: float, spe: int) -> LrFn:
    """Linear from eta_init at iteration 0 to base(n) at iteration n = warmup length, then base. `eta_init` is
    warmup.eta_init resolved to a number (the catapult's probe, harness/catapult.py, when it says `catapult`)."""
    n = to_iters(warmup.length, warmup.unit, spe)
    if n == 0:
        return base
    return lambda it: eta_init + (base(it) - eta_init) * it / n if it < n else base(it)


@register.heuristic("warmup", options=WarmupCfg)
class Warmup(Heuristic):
    """Every LR group warmed up from eta_init; `eta_init: catapult` probes it on the first batch (catapult.py)."""

    probes = ("eta_init",)

    @classmethod
    def active(cls, options: WarmupCfg) -> bool:
        return options.length > 0

    @classmethod
    def unstackable(cls, options: WarmupCfg) -> Optional[str]:
        if options.eta_init == "catapult":
            return "warmup.eta_init = 'catapult' probes one model; packed trials need a numeric eta_init"
        return None

    def probe(self, model, x, y) -> dict:
        if self.options.eta_init != "catapult":
            return {"eta_init": self.options.eta_init}
        from harness.catapult import catapult_lr

        return {"eta_init": catapult_lr(model, self.ctx.cfg.optim, x, y, self.ctx.cfg.optim.lr)}

    def schedule(self, base: LrFn, group: Optional[str]) -> LrFn:
        return with_warmup(base, self.options, self.values["eta_init"], self.ctx.spe)
