"""The module engine: how the training loop computes a step for one model (K = 1).

Any torch optimizer, DDP over the ranks that launched us, torch.compile, bf16 and
channels_last, and every heuristic hook (harness/heuristics.py): LR groups, frozen groups,
the loss term and the probe before the first step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import checkpoints, data as data_mod, distributed, optim, sync_bn
from harness.config import TrialConfig
from harness.errors import ConfigError
from harness.heuristics import Context, Heuristics
from harness.metrics import NAN
from harness.models import build
from harness.trial import autocast, memory_format, model_spec


def global_norm(tensors) -> float:
    """L2 norm of all the tensors together (NaN when there are none)."""
    ts = [t for t in tensors if t is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in ts])).item() if ts else NAN


@torch.no_grad()
def evaluate(model: nn.Module, ds: data_mod.Dataset, split: data_mod.Split, batch: int, d: distributed.Dist,
             amp) -> Tensor:
    """[1, 3]: summed loss, correct and count over a split, sharded over ranks and summed across them."""
    model.eval()
    sums = torch.zeros(1, 3, dtype=torch.float64, device=split.images.device)
    idx = torch.arange(d.rank, len(split), d.world, device=split.images.device)
    for lo in range(0, len(idx), batch):
        i = idx[lo:lo + batch]
        with amp():
            out = model(ds.normalize(split.images[i])).float()
        y = split.labels[i]
        sums[0, 0] += F.cross_entropy(out, y, reduction="sum").double()
        sums[0, 1] += (out.argmax(1) == y).sum()
        sums[0, 2] += len(i)
    distributed.all_reduce_sum(sums, d)
    model.train()
    return sums


class ModuleEngine:
    """One trial's model and optimizer; every per-member value is a list or tensor of length 1."""

    K = 1

    def __init__(self, cfgs: list[TrialConfig], ds: data_mod.Dataset, spe: int, d: distributed.Dist,
                 device: torch.device, cks: list[Optional[dict]], out: Path, total: int):
        (cfg,), (ck,) = cfgs, cks
        self.cfg, self.ds, self.spe, self.d, self.device = cfg, ds, spe, d, device
        if cfg.data.batch_size % d.world:
            raise ConfigError(f"data.batch_size = {cfg.data.batch_size}: must be divisible by the {d.world} DDP ranks")
        model = build(model_spec(cfg, ds))
        if cfg.model.bn == "sync":
            sync_bn.synchronise(model)
        model = model.to(device)
        if cfg.model.init_from:
            checkpoints.load_weights(model, checkpoints.load_ref(cfg.model.init_from, out, device)["model"],
                                     f"model.init_from {cfg.model.init_from}")
        if cfg.perf.channels_last:
            model = model.to(memory_format=torch.channels_last)
        hs = Heuristics(Context(cfg, model, spe, total, out, device, ds))
        named = dict(model.named_parameters())
        groups = hs.param_groups()
        self.model, self.hs, self.params = model, hs, named
        self.opt = optim.build(cfg.optim, model, groups and [[named[n] for n in g] for g in groups])
        if ck:
            checkpoints.load_weights(model, ck["model"], f"trial {cfg.trial_id()}'s last.pt")
            self.opt.load_state_dict(ck["optimizer"])
            checkpoints.set_rng_state(ck["rng"])
        hs.start(ck, self.first_batch)
        self.heuristics = [hs]
        net = model
        if d.world > 1:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if cfg.perf.compile:
            net = torch.compile(net, mode=cfg.perf.compile)
        self.net, self.amp, self.mem = net, autocast(cfg, device), memory_format(cfg)
        self.plan: Optional[data_mod.Epoch] = None
        net.train()

    @property
    def main(self) -> bool:
        return self.d.main

    def first_batch(self) -> tuple[nn.Module, Tensor, Tensor]:
        """(model, x, y) for a heuristic's probe: the first global batch, the same on every DDP rank."""
        c = self.cfg
        plan = data_mod.plan_epoch(self.ds, c.seed, 0, self.spe, c.data.batch_size, c.data.augment)
        return (self.model, *data_mod.train_batch(self.ds, plan, 0))

    def plan_epoch(self, epoch: int) -> None:
        c = self.cfg
        self.plan = data_mod.plan_epoch(self.ds, c.seed, epoch, self.spe, c.data.batch_size, c.data.augment)

    def forward_backward(self, step: int, it: int, alive: Tensor) -> tuple[Tensor, Tensor, int]:
        """This rank's share of step `step`'s batch: loss [1] and correct [1] (detached) and the count;
        gradients in .grad, frozen groups' dropped."""
        idx, aug = data_mod.batch_indices(self.plan, step, self.d.rank, self.d.world)
        x, y = data_mod.gather(self.ds, idx, aug)
        x = x.contiguous(memory_format=self.mem)
        with self.amp():
            logits = self.net(x)
            loss = self.hs.loss(logits, x, y, F.cross_entropy(logits.float(), y), idx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.hs.skip_frozen(it, self.params)
        return loss.detach().view(1), (logits.detach().argmax(1) == y).sum().view(1), len(y)

    def step(self, lrs: list[list[float]], lr_row: Tensor) -> None:
        optim.set_lr(self.opt, lrs[0])
        self.opt.step()

    def grad_norms(self) -> list[float]:
        return [global_norm(p.grad for p in self.model.parameters())]

    def weight_norms(self) -> list[float]:
        return [global_norm(self.model.parameters())]

    def step_losses(self, losses: Tensor) -> list[float]:
        """The step's loss averaged over the ranks."""
        return [distributed.all_reduce_sum(losses.clone().float(), self.d).item() / self.d.world]

    def first_flagged(self, bad_at: Tensor) -> list[int]:
        """The first iteration with a non-finite loss on any rank (-1: none)."""
        return [distributed.first_flagged(bad_at, self.d)]

    def reduce(self, sums: Tensor) -> Tensor:
        return distributed.all_reduce_sum(sums, self.d)

    def evaluate(self, split: data_mod.Split) -> Tensor:
        return evaluate(self.model, self.ds, split, self.cfg.data.eval_batch_size, self.d, self.amp)

    def member_state(self, i: int) -> dict:
        return self.model.state_dict()

    def optimizer_state(self, i: int) -> dict:
        return self.opt.state_dict()
