"""Learning-rate warmup (Goyal et al. 2017; closer look, sec. 4): linear from eta_init to any schedule."""
from __future__ import annotations

from typing import TYPE_CHECKING

from harness.schedules import LrFn, to_iters

if TYPE_CHECKING:
    from harness.config import WarmupCfg


def with_warmup(base: LrFn, warmup: WarmupCfg, eta_init: float, spe: int) -> LrFn:
    """Linear from eta_init at iteration 0 to base(n) at iteration n = warmup length, then base. `eta_init` is
    warmup.eta_init resolved to a number (the catapult's probe, harness/catapult.py, when it says `catapult`)."""
    n = to_iters(warmup.length, warmup.unit, spe)
    if n == 0:
        return base
    return lambda it: eta_init + (base(it) - eta_init) * it / n if it < n else base(it)
