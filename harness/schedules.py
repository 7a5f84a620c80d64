"""Learning-rate schedules as pure functions of the iteration: `lr_at(it) -> float`.

Lengths given in epochs are converted to iterations once, so every schedule is stepped
per iteration. Warmup wraps any of them (harness/warmup.py).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from harness.registry import register

if TYPE_CHECKING:
    from harness.config import ScheduleCfg

LrFn = Callable[[int], float]


@register.schedule("constant")
def constant(cfg: ScheduleCfg, lr: float, spe: int, total: int) -> LrFn:
    return lambda it: lr


@register.schedule("step")
def step(cfg: ScheduleCfg, lr: float, spe: int, total: int) -> LrFn:
    """Multiply by `factor` at each milestone (closer look: /5 at 60, 120, 160 epochs)."""
    ms = [to_iters(m, cfg.unit, spe) for m in cfg.milestones]
    return lambda it: lr * cfg.factor ** sum(it >= m for m in ms)


@register.schedule("linear")
def linear(cfg: ScheduleCfg, lr: float, spe: int, total: int) -> LrFn:
    """Linear decay from lr to eta_min over the whole budget (S1 mode C)."""
    return lambda it: cfg.eta_min + (lr - cfg.eta_min) * max(0.0, 1.0 - it / total)


@register.schedule("cosine")
def cosine(cfg: ScheduleCfg, lr: float, spe: int, total: int) -> LrFn:
    """A single cosine from lr to eta_min over the whole budget (S7)."""
    return lambda it: cfg.eta_min + 0.5 * (lr - cfg.eta_min) * (1 + math.cos(math.pi * min(it, total) / total))


@register.schedule("sgdr")
def sgdr(cfg: ScheduleCfg, lr: float, spe: int, total: int) -> LrFn:
    """Cosine annealing with warm restarts (Loshchilov & Hutter 2016, eq. 5)."""
    t0 = to_iters(cfg.t0, cfg.unit, spe)
    eta_max = cfg.eta_max or lr

    def lr_at(it: int) -> float:
        t_i, t_cur = t0, it
        while t_cur >= t_i:
            t_cur -= t_i
            t_i *= cfg.t_mult
        return cfg.eta_min + 0.5 * (eta_max - cfg.eta_min) * (1 + math.cos(math.pi * t_cur / t_i))

    return lr_at


def to_iters(n: int, unit: str, spe: int) -> int:
    return n * spe if unit == "epoch" else n


def build(cfg: ScheduleCfg, lr: float, spe: int, total: int) -> LrFn:
    """The configured schedule; a schedule plug-in is any (cfg, lr, steps_per_epoch, total_iterations) -> LrFn."""
    return register.get("schedule", cfg.name).obj(cfg, lr, spe, total)
