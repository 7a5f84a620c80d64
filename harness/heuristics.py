"""The heuristic interface: the few points where a heuristic acts on training, declared once.

A heuristic is a `Heuristic` subclass registered with `@register.heuristic(name, options=...)`; it overrides the
hooks it needs, each optional:

- `schedule(base, group)`: the learning rate of one LR group over the iterations, given the schedule's
  (warmup; a heuristic naming `lr_groups` gets those layer groups their own param groups and LRs);
- `frozen(it)`: the layer groups whose update is skipped at iteration `it` (freezing);
- `loss(logits, x, y, loss)`: the training loss given the batch and the outputs (distillation); a heuristic
  with `indexed` set also gets `idx`, the batch's global train indices (for values cached per image);
- `probe(model, x, y)`: once before the first step, values the run then uses and records, e.g. warmup's start
  (the catapult); a resumed run gets them back from its checkpoint instead (`values`).

The loop and both engines call `Heuristics` (all of a trial's heuristics together) and never name one. Which are
on: the built-in sections `warmup`, `freeze`, `distill` when `active`, then `heuristics:` in the config, in order.
A heuristic the stacked engine cannot run says why in `unstackable`, checked when a sweep is planned.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from harness.errors import ConfigError
from harness.registry import register

if TYPE_CHECKING:
    import torch
    from torch import nn

    from harness.config import TrialConfig
    from harness.data import Dataset

LrFn = Callable[[int], float]


@dataclass
class Context:
    """What a heuristic may look at when it is made: the trial's config, its model (the stacked engine passes one
    member's skeleton), the steps per epoch and in all, the sweep folder (for references), the device and the
    data set (on the device; the module engine's, None in the stacked engine)."""
    cfg: "TrialConfig"
    model: "nn.Module"
    spe: int
    total: int
    out: Path
    device: Any
    data: Optional["Dataset"] = None


class Heuristic:
    """Base class of every heuristic: each hook's default leaves training as it is."""

    probes: tuple[str, ...] = ()  # names of the values `probe` returns (recorded in status.json and checkpoints)
    indexed = False  # True: `loss` also gets `idx`, the batch's global train indices

    def __init__(self, options: Any, ctx: Context):
        self.options, self.ctx = options, ctx
        self.values: dict = {}

    @classmethod
    def active(cls, options: Any) -> bool:
        """Whether these options turn the heuristic on (a built-in section is always present)."""
        return options is not None

    @classmethod
    def unstackable(cls, options: Any) -> Optional[str]:
        """Why the stacked engine (a pack of models trained as one) cannot run it, or None. By default a heuristic
        with its own loss or probe cannot: a pack has one vmapped loss and no single model to probe."""
        for hook in ("loss", "probe"):
            if getattr(cls, hook) is not getattr(Heuristic, hook):
                return f"its {hook} hook runs on one model"
        return None

    def lr_groups(self) -> list[str]:
        """Layer groups (model.layer_groups names) whose learning rate this heuristic sets apart."""
        return []

    def schedule(self, base: LrFn, group: Optional[str]) -> LrFn:
        """The LR of `group` (one of the trial's LR groups; None: the parameters in none of them) given `base`."""
        return base

    def frozen(self, it: int) -> list[str]:
        """Layer groups whose update is skipped at iteration `it` (their gradients dropped before the step)."""
        return []

    def loss(self, logits: "torch.Tensor", x: "torch.Tensor", y: "torch.Tensor", loss: "torch.Tensor") \
            -> "torch.Tensor":
        """The training loss of the batch (x, y) with outputs `logits`, given the loss so far."""
        return loss

    def probe(self, model: "nn.Module", x: "torch.Tensor", y: "torch.Tensor") -> dict:
        """Values for the run (named in `probes`), measured once before the first step on the first batch."""
        return {}


register.contract("heuristic", lambda e: None if isinstance(e.obj, type) and issubclass(e.obj, Heuristic) else
                  "a heuristic must be a subclass of harness.heuristics.Heuristic (heurbench.Heuristic)")

BUILTIN_SECTIONS = ("warmup", "freeze", "distill")  # config sections that are built-in heuristics' options


def configured(cfg: "TrialConfig") -> list[tuple[str, Any]]:
    """(name, options) of every heuristic the config turns on, built-in sections first."""
    out = [(name, getattr(cfg, name)) for name in BUILTIN_SECTIONS]
    out += list(cfg.heuristics.items())
    return [(n, o) for n, o in out if register.get("heuristic", n).obj.active(o)]


def unstackable(cfg: "TrialConfig") -> Optional[str]:
    """One line on the first of the config's heuristics the stacked engine cannot run, or None."""
    for name, options in configured(cfg):
        why = register.get("heuristic", name).obj.unstackable(options)
        if why:
            return f"heuristic {name!r}: {why}"
    return None


class Heuristics:
    """A trial's heuristics together, as the engines and the loop use them."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.members = [register.get("heuristic", n).obj(o, ctx) for n, o in configured(ctx.cfg)]
        self.lr_groups = list(dict.fromkeys(g for h in self.members for g in h.lr_groups()))
        self.values: dict = {}
        self._names: dict[str, list[str]] = {}
        for g in [*self.lr_groups, *self.frozen(0)]:  # every group named exists (else one line, before training)
            self.names(g)

    def schedules(self, base: LrFn) -> list[LrFn]:
        """One LR function per param group: `lr_groups` in order, then the rest (a single one without groups)."""
        fns = []
        for group in [*self.lr_groups, None]:
            fn = base
            for h in self.members:
                fn = h.schedule(fn, group)
            fns.append(fn)
        return fns

    def frozen(self, it: int) -> list[str]:
        return list(dict.fromkeys(g for h in self.members for g in h.frozen(it)))

    def names(self, group: str) -> list[str]:
        """The model's parameter names in a layer group (an unknown group: one ConfigError line)."""
        if group not in self._names:
            from harness.models import group_params

            self._names[group] = [n for n, _ in group_params(self.ctx.model, [group])]
        return self._names[group]

    def param_groups(self) -> Optional[list[list[str]]]:
        """Parameter names per LR group (`lr_groups`, then the rest), or None when there is one group."""
        if not self.lr_groups:
            return None
        trainable = [n for n, p in self.ctx.model.named_parameters() if p.requires_grad]
        groups, seen = [], {}
        for g in self.lr_groups:
            names = [n for n in self.names(g) if n in trainable]
            for n in names:
                if n in seen:
                    raise ConfigError(f"LR groups {seen[n]!r} and {g!r} both hold parameter {n!r}")
                seen[n] = g
            groups.append(names)
        return groups + [[n for n in trainable if n not in seen]]

    def skip_frozen(self, it: int, params: dict) -> None:
        """Drop the gradients of the layer groups frozen at iteration `it` (`params`: tensors by the model's
        parameter names; a stack's are its stacked weights)."""
        for g in self.frozen(it):
            for n in self.names(g):
                params[n].grad = None

    def loss(self, logits, x, y, loss, idx):
        """The members' loss hooks in turn; `idx` (the batch's global train indices) goes to the `indexed` ones."""
        for h in self.members:
            loss = h.loss(logits, x, y, loss, idx) if h.indexed else h.loss(logits, x, y, loss)
        return loss

    def start(self, ck: Optional[dict], probe_args: Optional[Callable[[], tuple]] = None) -> dict:
        """Each heuristic's probed values: from the resumed checkpoint `ck`, or measured now (`probe_args()` gives
        (model, x, y); without it, as in the stacked engine, probes get None). Returns them all, by name."""
        args = None
        for h in self.members:
            if ck is not None:
                h.values = {k: ck[k] for k in h.probes if k in ck}
            elif h.probes:
                if args is None:
                    args = probe_args() if probe_args else (None, None, None)
                h.values = h.probe(*args)
            self.values.update(h.values)
        return self.values
