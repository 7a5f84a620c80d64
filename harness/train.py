"""One trial, top to bottom: data, model, optimizer, schedule; then per iteration
lr = lr_at(it), forward, backward, freeze, step, log, maybe evaluate and checkpoint.

The same function runs alone (`heurbench train`), as a DDP rank (torchrun, srun, Ray
Train) and inside a Ray Tune trial. Only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness import checkpoints, data as data_mod, distributed, optim, schedules
from harness.catapult import catapult_lr
from harness.config import ConfigError, TrialConfig
from harness.distill import kd_loss, load_teacher
from harness.freeze import Freezer
from harness.models import build
from harness.record import TrialRecord, finished_state
from harness.refs import resolve

log = logging.getLogger("heurbench.train")
NAN = float("nan")


def model_spec(cfg: TrialConfig, ds: data_mod.Dataset) -> dict:
    return {**cfg.model.model_dump(mode="json"), "num_classes": ds.num_classes,
            "in_channels": int(ds.train.images.shape[1])}


@torch.no_grad()
def evaluate(model: nn.Module, ds: data_mod.Dataset, split: data_mod.Split, batch: int, d: distributed.Dist,
             amp) -> tuple[float, float]:
    """Mean loss and accuracy over a split, sharded over ranks and summed."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=split.images.device)
    idx = torch.arange(d.rank, len(split), d.world, device=split.images.device)
    for lo in range(0, len(idx), batch):
        i = idx[lo:lo + batch]
        with amp():
            out = model(ds.normalize(split.images[i])).float()
        y = split.labels[i]
        sums[0] += F.cross_entropy(out, y, reduction="sum").double()
        sums[1] += (out.argmax(1) == y).sum()
        sums[2] += len(i)
    distributed.all_reduce_sum(sums, d)
    model.train()
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


def global_norm(tensors) -> float:
    ts = [t for t in tensors if t is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in ts])).item() if ts else NAN


def fmt_eta(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def steps(cfg: TrialConfig, n_train: int) -> tuple[int, int]:
    """(iterations per epoch, total iterations) of a trial on `n_train` images."""
    spe = n_train // cfg.data.batch_size
    if spe == 0:
        raise ConfigError(f"data.batch_size = {cfg.data.batch_size}: larger than the {n_train} train images")
    return spe, cfg.budget.iterations or cfg.budget.epochs * spe


def autocast(cfg: TrialConfig, device: torch.device):
    """bf16 autocast on CUDA when perf.bf16, else a no-op context."""
    if device.type == "cuda" and cfg.perf.bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def eval_interval(cfg: TrialConfig, spe: int) -> int:
    """Iterations between evaluations."""
    return cfg.eval.every * (spe if cfg.eval.unit == "epoch" else 1)


def memory_format(cfg: TrialConfig) -> torch.memory_format:
    return torch.channels_last if cfg.perf.channels_last else torch.contiguous_format


def progress(tid: str, it: int, total: int, spe: int, loss: float, lr: float, rate: float, batch: int) -> None:
    log.info("trial %s it %d/%d ep %.2f loss %.4f lr %.4g | %.0f img/s | ETA %s", tid, it, total, it / spe, loss, lr,
             rate, fmt_eta((total - it) * batch / max(rate, 1e-9)))


def run_trial(cfg: TrialConfig, out: str | Path, resume: bool = False, sweep: str = "") -> str:
    """Train one trial into `out` (runs/<sweep>/ layout); returns the final status."""
    out = Path(out)
    d, device = distributed.setup(cfg.perf.device)
    try:
        return _run(cfg, out, resume, sweep or out.name, d, device)
    finally:
        distributed.teardown(d)


def _run(cfg: TrialConfig, out: Path, resume: bool, sweep: str, d: distributed.Dist, device: torch.device) -> str:
    ended = finished_state(out, cfg) if resume else None
    if ended:
        log.info("trial %s already %s; skipping", cfg.trial_id(), ended)
        return ended
    torch.manual_seed(cfg.seed)
    ds = data_mod.load(cfg.data).to(device)
    B = cfg.data.batch_size
    if B % d.world:
        raise ConfigError(f"data.batch_size = {B}: must be divisible by the {d.world} DDP ranks")
    spe, total = steps(cfg, len(ds.train))
    spec = model_spec(cfg, ds)
    rec = TrialRecord(cfg, out, sweep, spec, spe, total, d.world, d.main)

    model = build(spec).to(device)
    if cfg.model.init_from:
        model.load_state_dict(checkpoints.load(resolve(cfg.model.init_from, out), device)["model"])
    if cfg.perf.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = optim.build(cfg.optim, model)
    freezer = Freezer(cfg.freeze, model, spe)
    teacher = load_teacher(cfg.distill, out, device) if cfg.distill else None

    ck = rec.resume_from(device) if resume else None
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        checkpoints.set_rng_state(ck["rng"])
        eta_init = ck.get("eta_init", 0.0)
        log.info("trial %s resuming at iteration %d/%d", rec.tid, ck["iteration"], total)
    else:
        eta_init = cfg.warmup.eta_init
        if eta_init == "catapult":  # every rank probes the same global batch, so all agree
            x, y = data_mod.train_batch(ds, data_mod.plan_epoch(ds, cfg.seed, 0, spe, B, cfg.data.augment), 0)
            eta_init = catapult_lr(model, cfg.optim, x, y, cfg.optim.lr)
    rec.open(ck, eta_init)
    lr_at = schedules.build(cfg.schedule, cfg.warmup.model_copy(update={"eta_init": eta_init}), cfg.optim.lr, spe,
                            total)

    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if cfg.perf.compile:
        net = torch.compile(net, mode=cfg.perf.compile)
    amp = autocast(cfg, device)
    mem = memory_format(cfg)
    eval_every = eval_interval(cfg, spe)

    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count since the last eval
    bad_at = torch.full((), -1, dtype=torch.long, device=device)  # first iteration with a non-finite loss
    it = rec.iteration
    t_mark, it_mark = time.perf_counter(), it
    t_start = time.perf_counter() - (ck["elapsed"] if ck else 0.0)
    plan = None
    net.train()
    while it < total:
        epoch, step = divmod(it, spe)
        if plan is None or step == 0:
            plan = data_mod.plan_epoch(ds, cfg.seed, epoch, spe, B, cfg.data.augment)
        rec.save_named(it, model.state_dict)
        lr = lr_at(it)
        optim.set_lr(opt, lr)
        x, y = data_mod.train_batch(ds, plan, step, d.rank, d.world)
        x = x.contiguous(memory_format=mem)
        with amp():
            logits = net(x)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                loss = kd_loss(logits.float(), t_logits.float(), y, cfg.distill.temperature, cfg.distill.weight)
            else:
                loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        freezer.apply(it)
        ld = loss.detach()
        bad_at = torch.where((bad_at < 0) & ~torch.isfinite(ld), it, bad_at)
        sums[0] += ld.double() * len(y)
        sums[1] += (logits.detach().argmax(1) == y).sum()
        sums[2] += len(y)
        log_row = it % cfg.eval.train_stride == 0
        grad_norm = global_norm(p.grad for p in model.parameters()) if log_row else NAN
        opt.step()
        it += 1
        due_eval = it % eval_every == 0 or it == total
        if log_row or it % cfg.eval.log_every == 0 or due_eval:
            bad = distributed.first_flagged(bad_at, d)
            if bad >= 0:
                log.warning("trial %s diverged: non-finite loss at iteration %d", rec.tid, bad)
                return rec.finish(it, "diverged", diverged_at=bad, reason=f"non-finite loss at iteration {bad}")
        now = time.perf_counter()
        rate = (it - it_mark) * B / max(now - t_mark, 1e-9)
        if log_row:
            loss_g = distributed.all_reduce_sum(ld.clone().float(), d).item() / d.world
            rec.add(kind="step", split="train", epoch=(it - 1) / spe, iteration=it - 1, lr=lr, loss=loss_g,
                    accuracy=NAN, grad_norm=grad_norm, weight_norm=global_norm(model.parameters()),
                    wall_time=now - t_start, images_per_s=rate)
        if it % cfg.eval.log_every == 0 and d.main:
            progress(rec.tid, it, total, spe, ld.item(), lr, rate, B)
        if due_eval:
            distributed.all_reduce_sum(sums, d)
            row = dict(epoch=it / spe, iteration=it, lr=lr, grad_norm=NAN, weight_norm=global_norm(model.parameters()),
                       wall_time=now - t_start, images_per_s=rate)
            rec.add(kind="eval", split="train", loss=(sums[0] / sums[2]).item(), accuracy=(sums[1] / sums[2]).item(),
                    **row)
            sums.zero_()
            for split_name, split in (("val", ds.val), ("test", ds.test)):
                if split is not None:
                    loss_v, acc_v = evaluate(model, ds, split, cfg.data.eval_batch_size, d, amp)
                    rec.add(kind="eval", split=split_name, loss=loss_v, accuracy=acc_v, **row)
            rec.save_last(it, model.state_dict(), opt.state_dict(), time.perf_counter() - t_start)
        if log_row or due_eval:  # each row's images/s covers the iterations since the previous row
            t_mark, it_mark = time.perf_counter(), it
    rec.save_named(it, model.state_dict)
    return rec.finish(it, "done")
