"""Several trials of a sweep trained in one process as one stack of models (torch.func).

Small CIFAR models at batch 100 leave a large GPU mostly idle: each step is a few hundred
small kernels. A pack of K trials with the same architecture and data runs one vmapped
forward/backward over K weight sets per step (convolutions become grouped convolutions),
so K trials cost little more than one. Members may differ in seed (init and data order),
SGD's lr / momentum / weight decay / nesterov, schedule, warmup and tags; each member
writes exactly the files `run_trial` writes (metrics, checkpoints, status), so a packed
trial can be resumed unpacked and the other way round.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from harness import checkpoints, data as data_mod, distributed, schedules
from harness.config import ConfigError, TrialConfig
from harness.models import build
from harness.record import TrialRecord, finished_state
from harness.refs import resolve
from harness.train import NAN, autocast, eval_interval, memory_format, model_spec, progress, run_trial, steps

log = logging.getLogger("heurbench.train")

# Keys in which the members of one pack may differ; everything else must be equal.
FREE = {"name", "seed", "tags", "schedule", "warmup",
        "optim.lr", "optim.momentum", "optim.weight_decay", "optim.nesterov", "model.init_from"}


def is_free(key: str) -> bool:
    """Whether a dotted config key may differ between the members of a pack."""
    return any(key == f or key.startswith(f + ".") for f in FREE)


def flat(d: dict, prefix: str = "") -> dict:
    """A config mapping as {dotted key: value}, not descending into the FREE keys."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not is_free(key):
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def pack_key(cfg: TrialConfig) -> str:
    """Equal for trials that may share a pack: their settings outside FREE."""
    return json.dumps({k: v for k, v in flat(cfg.model_dump(mode="json")).items() if not is_free(k)}, sort_keys=True)


def packs(cfgs: list[TrialConfig], size: int) -> list[list[int]]:
    """Indices of `cfgs` in packs of at most `size`: trials sharing a pack_key, in order; checked packable."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(pack_key(c), []).append(i)
    out = [g[lo:lo + size] for g in groups.values() for lo in range(0, len(g), size)]
    for p in out:
        if len(p) > 1:
            check_packable([cfgs[i] for i in p])
    return out


def check_packable(cfgs: list[TrialConfig]) -> None:
    """ConfigError naming the first setting that keeps these trials out of one pack."""
    first = flat(cfgs[0].model_dump(mode="json"))
    for c in cfgs:
        if c.optim.name != "sgd":
            raise ConfigError(f"optim.name = {c.optim.name!r}: packed trials train with sgd only")
        if c.freeze.groups or c.distill:
            key = "freeze.groups" if c.freeze.groups else "distill"
            raise ConfigError(f"{key}: set in trial {c.trial_id()}, which packing does not support")
        if c.warmup.eta_init == "catapult":
            raise ConfigError("warmup.eta_init = 'catapult': packed trials need a numeric eta_init")
        mine = flat(c.model_dump(mode="json"))
        for k in sorted(set(first) | set(mine)):
            if not is_free(k) and first.get(k) != mine.get(k):
                raise ConfigError(f"{k}: {first.get(k)!r} vs {mine.get(k)!r}: trials in one pack must share it "
                                  f"(they may differ only in {', '.join(sorted(FREE))})")


class StackedSGD:
    """torch.optim.SGD semantics (momentum, dampening 0, nesterov, coupled weight decay) for a stack of K
    models, with per-member hyper-parameters; its per-member state reads and writes SGD's state_dict."""

    def __init__(self, params: dict[str, Tensor], cfgs: list[TrialConfig]):
        self.params = params
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
            p.sub_(self.per_member(lrs, p) * step)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def _sgd(self, i: int, tensors: list[Tensor]) -> torch.optim.SGD:
        c = self.cfgs[i].optim
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


def run_pack(cfgs: list[TrialConfig], out: str | Path, resume: bool = True, sweep: str = "") -> list[str]:
    """Train `cfgs` as one stacked pack into `out`; returns each trial's final state. Trials already
    finished are skipped; if the rest were left at different iterations they resume one by one."""
    out = Path(out)
    check_packable(cfgs)
    d, device = distributed.setup(cfgs[0].perf.device)
    try:
        return _run_pack(cfgs, out, resume, sweep or out.name, device)
    finally:
        distributed.teardown(d)


def _run_pack(cfgs: list[TrialConfig], out: Path, resume: bool, sweep: str, device: torch.device) -> list[str]:
    states = [finished_state(out, c) if resume else None for c in cfgs]
    todo = [i for i, s in enumerate(states) if not s]
    if not todo:
        return states
    ds = data_mod.load(cfgs[0].data).to(device)
    spe, total = steps(cfgs[0], len(ds.train))
    spec = model_spec(cfgs[0], ds)
    recs = [TrialRecord(cfgs[i], out, sweep, spec, spe, total) for i in todo]
    cks = [r.resume_from(device) if resume else None for r in recs]
    if len({ck["iteration"] if ck else 0 for ck in cks}) > 1:
        log.warning("pack: members left at different iterations; resuming them one at a time")
        return [s or run_trial(c, out, True, sweep) for c, s in zip(cfgs, states)]
    ended = _train([cfgs[i] for i in todo], recs, cks, ds, spe, total, device)
    return [s or ended[c.trial_id()] for c, s in zip(cfgs, states)]


class Stack:
    """K models of one architecture as stacked weights, trained together: one vmapped forward/backward."""

    def __init__(self, models: list[torch.nn.Module], cfgs: list[TrialConfig], ds: data_mod.Dataset,
                 device: torch.device):
        self.K, self.ds, self.device = len(models), ds, device
        self.params, self.buffers = stack_module_state(models)
        self.skeleton = copy.deepcopy(models[0])
        self.keys = list(self.skeleton.state_dict())
        self.opt = StackedSGD(self.params, cfgs)
        self.amp = autocast(cfgs[0], device)
        self.mem = memory_format(cfgs[0])
        self.eval_batch = cfgs[0].data.eval_batch_size

        def forward(p, b, x):
            return functional_call(self.skeleton, (p, b), (x,))

        self.stacked = vmap(forward, randomness="different")  # members' weights, buffers and batches
        self.shared = vmap(forward, in_dims=(0, 0, None), randomness="different")  # one batch for all members
        self.skeleton.train()
        self.losses, self.step = self._losses, self.opt.step
        mode = cfgs[0].perf.compile
        if mode:  # the stacked forward + loss as one graph in `mode`; the optimizer step fused by inductor
            for t in (*self.params.values(), *self.buffers.values()):
                torch._dynamo.mark_static_address(t)  # updated in place: not copied into CUDA graphs each step
            self.losses = torch.compile(self._losses, mode=mode)
            self.step = torch.compile(self.opt.step)

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
            logits = self.stacked(self.params, self.buffers,
                                  x.flatten(0, 1).contiguous(memory_format=self.mem).unflatten(0, (K, B)))
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(K, B).mean(1)
        return losses, logits

    @torch.no_grad()
    def evaluate(self, split: data_mod.Split) -> Tensor:
        """Per member [K, 3]: summed loss, correct, count over the split (BN in eval mode)."""
        self.skeleton.eval()
        sums = torch.zeros(self.K, 3, dtype=torch.float64, device=self.device)
        for lo in range(0, len(split), self.eval_batch):
            y = split.labels[lo:lo + self.eval_batch]
            x = self.ds.normalize(split.images[lo:lo + self.eval_batch]).contiguous(memory_format=self.mem)
            with self.amp():
                out = self.shared(self.params, self.buffers, x).float()
            sums[:, 0] += F.cross_entropy(out.flatten(0, 1), y.repeat(self.K), reduction="none").view(self.K, -1) \
                .sum(1).double()
            sums[:, 1] += (out.argmax(2) == y).sum(1)
            sums[:, 2] += len(y)
        self.skeleton.train()
        return sums


def member_batches(ds: data_mod.Dataset, plans: list[data_mod.Epoch], step: int) -> tuple[Tensor, Tensor]:
    """Each member's own batch (its seed's order and augmentation), gathered in one go: [K, B, C, H, W], [K, B]."""
    idx, aug = zip(*[data_mod.batch_indices(p, step) for p in plans])
    x, y = data_mod.gather(ds, torch.cat(idx), None if aug[0] is None else torch.cat(aug, 1))
    return x.unflatten(0, (len(plans), -1)), y.view(len(plans), -1)


def plan_members(ds: data_mod.Dataset, cfgs: list[TrialConfig], lr_fns: list, epoch: int, spe: int,
                 total: int) -> tuple[list[data_mod.Epoch], list[list[float]], Tensor]:
    """Every member's batches for one epoch, and its learning rates there, [steps][K], as floats and as a
    tensor on the data's device (copied once, so that a step copies nothing from the host)."""
    plans = [data_mod.plan_epoch(ds, c.seed, epoch, spe, c.data.batch_size, c.data.augment) for c in cfgs]
    lrs = [[f(it) for f in lr_fns] for it in range(epoch * spe, min((epoch + 1) * spe, total))]
    return plans, lrs, torch.tensor(lrs, device=ds.train.images.device)


def _train(cfgs: list[TrialConfig], recs: list[TrialRecord], cks: list[Optional[dict]], ds: data_mod.Dataset,
           spe: int, total: int, device: torch.device) -> dict[str, str]:
    K, B = len(cfgs), cfgs[0].data.batch_size
    models = []
    for c, ck in zip(cfgs, cks):
        torch.manual_seed(c.seed)
        m = build(model_spec(c, ds)).to(device)
        if ck:
            m.load_state_dict(ck["model"])
        elif c.model.init_from:
            m.load_state_dict(checkpoints.load(resolve(c.model.init_from, recs[0].out), device)["model"])
        models.append(m)
    st = Stack(models, cfgs, ds, device)
    del models
    for i, ck in enumerate(cks):
        if ck:
            st.opt.load_state_dict(i, ck["optimizer"])
    lr_fns = [schedules.build(c.schedule, c.warmup, c.optim.lr, spe, total) for c in cfgs]
    for r, ck in zip(recs, cks):
        r.open(ck, r.cfg.warmup.eta_init)
    it = recs[0].iteration
    if it:
        log.info("pack of %d resuming at iteration %d/%d", K, it, total)
    eval_every = eval_interval(cfgs[0], spe)
    stride, log_every = cfgs[0].eval.train_stride, cfgs[0].eval.log_every

    alive = torch.ones(K, dtype=torch.bool, device=device)
    ended: dict[str, str] = {}
    sums = torch.zeros(K, 3, dtype=torch.float64, device=device)  # per member: loss, correct, count since eval
    bad_at = torch.full((K,), -1, dtype=torch.long, device=device)  # per member: first non-finite loss
    t_mark, it_mark = time.perf_counter(), it
    t_start = time.perf_counter() - (cks[0]["elapsed"] if cks[0] else 0.0)
    plans = None
    while it < total and len(ended) < K:
        epoch, step = divmod(it, spe)
        if plans is None or step == 0:
            plans, lr_rows, lr_table = plan_members(ds, cfgs, lr_fns, epoch, spe, total)
        for i, r in enumerate(recs):
            if r.tid not in ended:
                r.save_named(it, lambda i=i: st.member_state(i))
        lrs = lr_rows[step]
        x, y = member_batches(ds, plans, step)
        ld, logits = st.backward(x, y, alive)
        bad_at = torch.where((bad_at < 0) & ~torch.isfinite(ld), it, bad_at)
        sums[:, 0] += ld.double() * B
        sums[:, 1] += (logits.argmax(2) == y).sum(1)
        sums[:, 2] += B
        log_row = it % stride == 0
        grad_norms = member_norms([p.grad for p in st.params.values() if p.grad is not None]) if log_row else None
        st.step(lr_table[step])
        it += 1
        due_eval = it % eval_every == 0 or it == total
        if log_row or it % log_every == 0 or due_eval:
            for i in torch.nonzero(alive & (bad_at >= 0)).flatten().tolist():
                bad = int(bad_at[i])
                log.warning("trial %s diverged: non-finite loss at iteration %d", recs[i].tid, bad)
                ended[recs[i].tid] = recs[i].finish(it, "diverged", diverged_at=bad,
                                                    reason=f"non-finite loss at iteration {bad}")
                alive[i] = False
        now = time.perf_counter()
        rate = (it - it_mark) * B / max(now - t_mark, 1e-9)  # per member
        weight_norms = member_norms(list(st.params.values())).tolist() if log_row or due_eval else None
        if log_row:
            for i, r in enumerate(recs):
                if r.tid not in ended:
                    r.add(kind="step", split="train", epoch=(it - 1) / spe, iteration=it - 1, lr=lrs[i],
                          loss=ld[i].item(), accuracy=NAN, grad_norm=grad_norms[i].item(),
                          weight_norm=weight_norms[i], wall_time=now - t_start, images_per_s=rate)
        if it % log_every == 0:
            progress(f"pack[{K}] {recs[0].tid}..", it, total, spe, ld[alive].mean().item() if alive.any() else NAN,
                     lrs[0], rate * K, B * K)
        if due_eval:
            splits = {"train": sums.clone()}
            splits.update({name: st.evaluate(s) for name, s in (("val", ds.val), ("test", ds.test)) if s is not None})
            sums.zero_()
            for i, r in enumerate(recs):
                if r.tid in ended:
                    continue
                row = dict(epoch=it / spe, iteration=it, lr=lrs[i], grad_norm=NAN, weight_norm=weight_norms[i],
                           wall_time=now - t_start, images_per_s=rate)
                for name, s in splits.items():
                    r.add(kind="eval", split=name, loss=(s[i, 0] / s[i, 2]).item(), accuracy=(s[i, 1] / s[i, 2]).item(),
                          **row)
                r.save_last(it, st.member_state(i), st.opt.state_dict(i), time.perf_counter() - t_start)
        if log_row or due_eval:  # each row's images/s covers the iterations since the previous row
            t_mark, it_mark = time.perf_counter(), it
    for i, r in enumerate(recs):
        if r.tid not in ended:
            r.save_named(it, lambda i=i: st.member_state(i))
            ended[r.tid] = r.finish(it, "done")
    return ended


def probe(cfg: TrialConfig, sizes: tuple[int, ...] = (1, 2, 4, 8, 16), iters: int = 5,
          memory_fraction: float = 0.8) -> tuple[int, list[dict]]:
    """Measure one training step of `cfg`'s model stacked K times for each K in `sizes` on its device:
    aggregate images/s and peak memory. Returns the pack size with the best aggregate rate (a larger K
    only when it gains 10% or more, and only while memory stays under `memory_fraction` of the device's)
    and the measured rows."""
    d, device = distributed.setup(cfg.perf.device)
    try:
        ds = data_mod.load(cfg.data).to(device)
        spec, B, rows = model_spec(cfg, ds), cfg.data.batch_size, []
        cuda = device.type == "cuda"
        limit = torch.cuda.get_device_properties(device).total_memory * memory_fraction if cuda else float("inf")
        plan = data_mod.plan_epoch(ds, cfg.seed, 0, 1, B, cfg.data.augment)
        for k in sizes:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                st = Stack([build(spec).to(device) for _ in range(k)], [cfg] * k, ds, device)
                x, y = member_batches(ds, [plan] * k, 0)
                alive, lrs = torch.ones(k, dtype=torch.bool, device=device), torch.full((k,), cfg.optim.lr,
                                                                                       device=device)
                for i in range(iters + 2):  # two untimed warm-up steps
                    if i == 2:
                        if cuda:
                            torch.cuda.synchronize(device)
                        t0 = time.perf_counter()
                    st.backward(x, y, alive)
                    st.step(lrs)
                if cuda:
                    torch.cuda.synchronize(device)
                rate = k * B * iters / (time.perf_counter() - t0)
                peak = torch.cuda.max_memory_allocated(device) if cuda else float("nan")
            except torch.OutOfMemoryError:
                break
            finally:
                st = None
            rows.append({"pack": k, "images_per_s": rate, "peak_memory_gb": peak / 2**30})
            log.info("pack probe: %d x %s bs %d: %.0f img/s, peak %.2f GB", k, cfg.model.name, B, rate, peak / 2**30)
            if peak > limit:
                rows[-1]["over_memory"] = True
                break
        best = rows[0]
        for row in rows[1:]:
            if not row.get("over_memory") and row["images_per_s"] >= 1.1 * best["images_per_s"]:
                best = row
        return best["pack"], rows
    finally:
        distributed.teardown(d)
