"""The stacked engine: how the training loop computes a step for a pack of K models of one architecture.

Small CIFAR models at batch 100 leave a large GPU mostly idle: each step is a few hundred
small kernels. The stack runs one vmapped forward/backward (torch.func) over K weight sets
per step (convolutions become grouped convolutions), with SGD per member, so K trials cost
little more than one. Members may differ in what harness/pack.py allows.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from harness import checkpoints, data as data_mod, distributed
from harness.config import TrialConfig
from harness.heuristics import Context, Heuristics
from harness.models import build
from harness.trial import autocast, model_spec


class StackedSGD:
    """torch.optim.SGD semantics (momentum, dampening 0, nesterov, coupled weight decay) for a stack of K
    models, with per-member hyper-parameters; its per-member state reads and writes SGD's state_dict."""

    def __init__(self, params: dict[str, Tensor], cfgs: list[TrialConfig], groups: Optional[list[list[str]]] = None):
        """`groups`: parameter names per LR group (heuristics.Heuristics.param_groups), or None for one."""
        self.params = params
        self.column = {k: i for i, g in enumerate(groups or []) for k in g}  # parameter -> its LR group's column
        dev = next(iter(params.values())).device
        self.momentum = torch.tensor([c.optim.momentum for c in cfgs], device=dev)
        self.wd = torch.tensor([c.optim.weight_decay for c in cfgs], device=dev)
        self.nesterov = torch.tensor([c.optim.nesterov for c in cfgs], device=dev)
        self.cfgs = cfgs
        self.trainable = [k for k, p in params.items() if p.requires_grad]  # run_trial's optimizer order
        # a zero buffer gives SGD's first step (buffer = gradient) exactly; allocated only if some member uses it
        self.buf = {k: torch.zeros_like(params[k]) for k in self.trainable} \
            if any(c.optim.momentum for c in cfgs) else None

    @staticmethod
    def per_member(v: Tensor, like: Tensor) -> Tensor:
        return v.view(-1, *[1] * (like.dim() - 1)).to(like.dtype)

    @torch.no_grad()
    def step(self, lrs: Tensor) -> None:
        """One step with `lrs` [K, groups] (each member's LR per LR group) or [K] (one group)."""
        lrs = lrs.view(len(lrs), -1)
        for k in self.trainable:
            p = self.params[k]
            if p.grad is None:
                continue
            d = p.grad + self.per_member(self.wd, p) * p
            if self.buf is None:
                step = d
            else:
                m = self.per_member(self.momentum, p)
                buf = self.buf[k].mul_(m).add_(d)
                step = torch.where(self.per_member(self.nesterov, p).bool(), d + m * buf, buf)
            p.sub_(self.per_member(lrs[:, self.column.get(k, -1)], p) * step)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def _sgd(self, i: int, tensors: list[Tensor]) -> torch.optim.SGD:
        """Member i's torch.optim.SGD over `tensors` (in `trainable` order), in the module engine's param groups."""
        c = self.cfgs[i].optim
        if self.column:
            by_name = dict(zip(self.trainable, tensors))
            last = max(self.column.values()) + 1
            tensors = [{"params": [by_name[k] for k in self.trainable if self.column.get(k, last) == g]}
                       for g in range(last + 1)]
        return torch.optim.SGD(tensors, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                               weight_decay=c.weight_decay)

    def state_dict(self, i: int) -> dict:
        """Member i's state in torch.optim.SGD's format (what run_trial saves)."""
        views = [self.params[k][i].detach() for k in self.trainable]
        opt = self._sgd(i, views)
        if self.buf is not None and self.cfgs[i].optim.momentum:
            for k, v in zip(self.trainable, views):
                opt.state[v]["momentum_buffer"] = self.buf[k][i].clone()
        return opt.state_dict()

    def load_state_dict(self, i: int, state: dict) -> None:
        views = [self.params[k][i].detach().clone() for k in self.trainable]
        opt = self._sgd(i, views)
        opt.load_state_dict(state)
        for k, v in zip(self.trainable, views):
            b = opt.state.get(v, {}).get("momentum_buffer")
            if b is not None and self.buf is not None:
                self.buf[k][i] = b


def member_norms(tensors: list[Tensor]) -> Tensor:
    """Per-member global L2 norm of stacked tensors [K, ...] -> [K]."""
    return torch.stack([t.detach().float().flatten(1).norm(dim=1) for t in tensors]).norm(dim=0)


def member_batches(ds: data_mod.Dataset, plans: list[data_mod.Epoch], step: int) -> tuple[Tensor, Tensor]:
    """Each member's own batch (its seed's order and augmentation), gathered in one go: [K, B, C, H, W], [K, B]."""
    idx, aug = zip(*[data_mod.batch_indices(p, step) for p in plans])
    x, y = data_mod.gather(ds, torch.cat(idx), None if aug[0] is None else torch.cat(aug, 1))
    return x.unflatten(0, (len(plans), -1)), y.view(len(plans), -1)



class Stack:
    """K models of one architecture as stacked weights, trained together: one vmapped forward/backward.
    Per-member values (losses, norms, lrs) are [K] tensors or lists; a pack runs in one process. Inputs stay in
    the contiguous format whatever perf.channels_last says: batch norm cannot ask for another format inside
    vmap, and the members' convolutions run as one grouped convolution, which channels_last only wraps in
    layout conversions (profiled on an H200, bench/RESULTS.md)."""

    main = True

    def __init__(self, models: list[torch.nn.Module], cfgs: list[TrialConfig], ds: data_mod.Dataset,
                 device: torch.device, spe: int = 1, total: int = 1, out: Optional[Path] = None):
        self.K, self.ds, self.device, self.cfgs, self.spe = len(models), ds, device, cfgs, spe
        self.plans: list[data_mod.Epoch] = []
        self.params, self.buffers = stack_module_state(models)
        self.skeleton = copy.deepcopy(models[0])
        self.keys = list(self.skeleton.state_dict())
        # each member's heuristics (harness/pack.py admits only those `unstackable` allows: LR and frozen groups)
        self.heuristics = [Heuristics(Context(c, self.skeleton, spe, total, out, device)) for c in cfgs]
        self.hs = self.heuristics[0]  # members share frozen and LR groups (pack_key)
        self.opt = StackedSGD(self.params, cfgs, self.hs.param_groups())
        self.amp = autocast(cfgs[0], device)
        self.eval_batch = cfgs[0].data.eval_batch_size

        def forward(p, b, x):
            return functional_call(self.skeleton, (p, b), (x,))

        self.stacked = vmap(forward, randomness="different")  # members' weights, buffers and batches
        self.shared = vmap(forward, in_dims=(0, 0, None), randomness="different")  # one batch for all members
        self.skeleton.train()
        self.losses, self.sgd_step = self._losses, self.opt.step
        mode = cfgs[0].perf.compile
        if mode:  # the stacked forward + loss as one graph in `mode`; the optimizer step fused by inductor
            for t in (*self.params.values(), *self.buffers.values()):
                torch._dynamo.mark_static_address(t)  # updated in place: not copied into CUDA graphs each step
            self.losses = torch.compile(self._losses, mode=mode)
            self.sgd_step = torch.compile(self.opt.step)

    def plan_epoch(self, epoch: int) -> None:
        """Every member's batches for the epoch (its own seed's order and augmentation)."""
        self.plans = [data_mod.plan_epoch(self.ds, c.seed, epoch, self.spe, c.data.batch_size, c.data.augment)
                      for c in self.cfgs]

    def forward_backward(self, step: int, it: int, alive: Tensor) -> tuple[Tensor, Tensor, int]:
        """Step `step` of every member on its own batch: losses [K] and correct [K] (detached) and the batch size."""
        x, y = member_batches(self.ds, self.plans, step)
        losses, logits = self.backward(x, y, alive)
        self.hs.skip_frozen(it, self.params)
        return losses, (logits.argmax(2) == y).sum(1), y.shape[1]

    def step(self, lrs: list[float], lr_row: Tensor) -> None:
        self.sgd_step(lr_row)

    def grad_norms(self) -> list[float]:
        return member_norms([p.grad for p in self.params.values() if p.grad is not None]).tolist()

    def weight_norms(self) -> list[float]:
        return member_norms(list(self.params.values())).tolist()

    def step_losses(self, losses: Tensor) -> list[float]:
        return losses.tolist()

    def first_flagged(self, bad_at: Tensor) -> list[int]:
        return bad_at.tolist()

    def reduce(self, sums: Tensor) -> Tensor:
        return sums

    def optimizer_state(self, i: int) -> dict:
        return self.opt.state_dict(i)

    def member_state(self, i: int) -> dict:
        """Member i's state_dict, as its own model would return it."""
        return {k: (self.params[k] if k in self.params else self.buffers[k])[i].detach().clone() for k in self.keys}

    def backward(self, x: Tensor, y: Tensor, alive: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's gradient on its own batch (x [K, B, C, H, W], y [K, B]) into the stacked .grad, for
        `step`; returns per-member losses [K] and logits [K, B, classes]. Dead members (alive False) get none."""
        losses, logits = self.losses(x, y)
        self.opt.zero_grad()
        torch.where(alive, losses, 0.0).sum().backward()  # members are independent: each gets its own gradient
        return losses.detach(), logits.detach()

    def _losses(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        K, B = y.shape
        with self.amp():
            logits = self.stacked(self.params, self.buffers, x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(K, B).mean(1)
        return losses, logits

    @torch.no_grad()
    def evaluate(self, split: data_mod.Split) -> Tensor:
        """Per member [K, 3]: summed loss, correct, count over the split (BN in eval mode)."""
        self.skeleton.eval()
        sums = torch.zeros(self.K, 3, dtype=torch.float64, device=self.device)
        for lo in range(0, len(split), self.eval_batch):
            y = split.labels[lo:lo + self.eval_batch]
            x = self.ds.normalize(split.images[lo:lo + self.eval_batch])
            with self.amp():
                out = self.shared(self.params, self.buffers, x).float()
            sums[:, 0] += F.cross_entropy(out.flatten(0, 1), y.repeat(self.K), reduction="none").view(self.K, -1) \
                .sum(1).double()
            sums[:, 1] += (out.argmax(2) == y).sum(1)
            sums[:, 2] += len(y)
        self.skeleton.train()
        return sums


def stacked_engine(cfgs: list[TrialConfig], ds: data_mod.Dataset, spe: int, d: distributed.Dist,
                   device: torch.device, cks: list[Optional[dict]], out: Path, total: int) -> "Stack":
    """The pack's members built as their own trials would be (seeded init, init_from or the resumed weights),
    then stacked."""
    models = []
    for c, ck in zip(cfgs, cks):
        torch.manual_seed(c.seed)
        m = build(model_spec(c, ds)).to(device)
        if ck:
            checkpoints.load_weights(m, ck["model"], f"trial {c.trial_id()}'s last.pt")
        elif c.model.init_from:
            checkpoints.load_weights(m, checkpoints.load_ref(c.model.init_from, out, device)["model"],
                                     f"model.init_from {c.model.init_from}")
        models.append(m)
    st = Stack(models, cfgs, ds, device, spe, total, out)
    for i, ck in enumerate(cks):
        if ck:
            st.opt.load_state_dict(i, ck["optimizer"])
        st.heuristics[i].start(ck)
    return st
