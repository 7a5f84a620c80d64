"""The training loop, written once over K members: K = 1 for a plain trial, K > 1 for a pack.

Per iteration: save the checkpoints due, lr = lr_at(it), forward + backward (the engine),
optimizer step, divergence check, a step row every `train_stride` iterations, and at each
evaluation the train/val/test rows plus the rolling `last.pt`. How a step is computed is
the engine's business: `ModuleEngine` (one model: DDP, compile, any optimizer, every heuristic hook) or the
stacked engine (K models vmapped, SGD per member); both act on heuristics only through harness.heuristics.

`run_trial` runs alone (`heurbench train`), as a DDP rank (torchrun, srun, Ray Train) and
inside a Ray Tune trial; only rank 0 writes files. `run_pack` trains several trials of a
sweep in one process.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from harness import confine, data as data_mod, distributed, lock, metrics, provenance, schedules
from harness.config import TrialConfig
from harness.grid import FINISHED
from harness.layout import RunDir
from harness.module_engine import ModuleEngine
from harness.pack import check_packable
from harness.record import TrialRecord, finished_state
from harness.stacked_engine import stacked_engine
from harness.trial import bn_batch, eval_interval, model_spec, steps

log = logging.getLogger("heurbench.train")


def fmt_eta(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress(label: str, it: int, total: int, spe: int, loss: float, lr: float, rate: float, batch: int) -> None:
    log.info("trial %s it %d/%d ep %.2f loss %.4f lr %.4g | %.0f img/s | ETA %s", label, it, total, it / spe, loss,
             lr, rate, fmt_eta((total - it) * batch / max(rate, 1e-9)))


def run_trial(cfg: TrialConfig, out: str | Path, resume: bool = False, sweep: str = "") -> str:
    """Train one trial into `out` (a run folder, harness.layout); returns its final state."""
    out = Path(out)
    d, device = distributed.setup(cfg.perf.device)
    try:
        return train([cfg], out, resume, sweep or out.name, d, device, ModuleEngine)[0]
    finally:
        distributed.teardown(d)


def run_pack(cfgs: list[TrialConfig], out: str | Path, resume: bool = True, sweep: str = "") -> list[str]:
    """Train `cfgs` as one stacked pack into `out`; returns each trial's final state. Trials already
    finished are skipped; if the rest were left at different iterations they resume one by one."""
    out = Path(out)
    check_packable(cfgs)
    d, device = distributed.setup(cfgs[0].perf.device)
    try:
        return train(cfgs, out, resume, sweep or out.name, d, device, stacked_engine)
    finally:
        distributed.teardown(d)


def train(cfgs: list[TrialConfig], out: Path, resume: bool, sweep: str, d: distributed.Dist, device: torch.device,
          engine_for: Callable) -> list[str]:
    """`train_locked` holding every trial's lock (rank 0 takes them; harness.lock): a process still training one
    of them (a killed driver's Ray worker) is waited for, up to lock.TRIAL_WAIT seconds."""
    run = RunDir(out)
    if d.main:
        confine.claim(out, sweep)  # before the first write: a folder heurbench did not make is refused
    held = [(run.trial(c.trial_id()).lock, f"trial {c.trial_id()} ({run.trial(c.trial_id()).path})") for c in cfgs]
    with lock.hold_all(held if d.main else [], lock.TRIAL_WAIT, hint="another process is training it"):
        if d.world > 1:
            torch.distributed.barrier()  # every rank reads the trials' states once rank 0 holds their locks
        states = train_locked(cfgs, out, resume, sweep, d, device, engine_for)
        for c, s in zip(cfgs, states):  # an ended trial's parts become one file (also one skipped as ended)
            if d.main and s in FINISHED:
                metrics.compact(run, c.trial_id())
        return states


def train_locked(cfgs: list[TrialConfig], out: Path, resume: bool, sweep: str, d: distributed.Dist,
                 device: torch.device, engine_for: Callable) -> list[str]:
    """Load the data, open each unfinished trial's record (resuming from its last.pt), build the engine, run the
    loop; returns every trial's final state."""
    states = [finished_state(out, c) if resume else None for c in cfgs]
    for c, s in zip(cfgs, states):
        if s:
            log.info("trial %s already %s; skipping", c.trial_id(), s)
    todo = [c for c, s in zip(cfgs, states) if not s]
    if not todo:
        return states
    torch.manual_seed(todo[0].seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: cuDNN times its algorithms once
    ds = data_mod.load(todo[0].data).to(device)
    spe, total = steps(todo[0], len(ds.train))
    spec = model_spec(todo[0], ds)
    recs = [TrialRecord(c, out, sweep, spec, spe, total, d.world, d.main, provenance.of_trial(c, device),
                        bn_batch(c, spec, d.world)) for c in todo]
    cks = [r.resume_from(device) if resume else None for r in recs]
    if len({ck["iteration"] if ck else 0 for ck in cks}) > 1:
        log.warning("pack: members left at different iterations; resuming them one at a time")
        return [s or run_trial(c, out, True, sweep) for c, s in zip(cfgs, states)]
    engine = engine_for(todo, ds, spe, d, device, cks, out, total)
    loop(engine, recs, cks, ds, spe, total)
    ended = iter(r.ended for r in recs)
    return [s or next(ended) for s in states]


def lr_table(lr_fns: list[list[schedules.LrFn]], epoch: int, spe: int, total: int, device: torch.device) \
        -> tuple[list[list[list[float]]], torch.Tensor]:
    """Every member's learning rate per LR group over one epoch, [steps][K][groups], as floats and as one tensor on
    the device (copied once per epoch, so that a step copies nothing from the host)."""
    rows = [[[f(it) for f in fns] for fns in lr_fns] for it in range(epoch * spe, min((epoch + 1) * spe, total))]
    return rows, torch.tensor(rows, device=device)


def loop(engine, recs: list[TrialRecord], cks: list[Optional[dict]], ds: data_mod.Dataset, spe: int,
         total: int) -> None:
    """Train every member from its records' iteration to `total` or until it diverges; each record ends
    'done' or 'diverged'."""
    cfg, K, device = recs[0].cfg, len(recs), engine.device
    B = cfg.data.batch_size
    label = recs[0].tid if K == 1 else f"pack[{K}] {recs[0].tid}.."
    lr_fns = []
    for r, ck, hs in zip(recs, cks, engine.heuristics):
        r.open(ck, hs.values)
        lr_fns.append(hs.schedules(schedules.build(r.cfg.schedule, r.cfg.optim.lr, spe, total)))
    it = recs[0].iteration
    if it:
        log.info("trial %s resuming at iteration %d/%d", label, it, total)
    eval_every = eval_interval(cfg, spe)
    stride, log_every = cfg.eval.train_stride, cfg.eval.log_every

    alive = torch.ones(K, dtype=torch.bool, device=device)
    sums = torch.zeros(K, 3, dtype=torch.float64, device=device)  # per member: loss, correct, count since eval
    bad_at = torch.full((K,), -1, dtype=torch.long, device=device)  # per member: first non-finite loss
    t_mark, it_mark = time.perf_counter(), it
    t_start = time.perf_counter() - (cks[0]["elapsed"] if cks[0] else 0.0)
    live = [i for i, r in enumerate(recs) if not r.ended]
    lrs_epoch = None
    while it < total and live:
        epoch, step = divmod(it, spe)
        if lrs_epoch is None or step == 0:
            engine.plan_epoch(epoch)
            lrs_epoch, lrs_device = lr_table(lr_fns, epoch, spe, total, device)
        for i in live:
            recs[i].save_named(it, lambda i=i: engine.member_state(i))
        lrs = lrs_epoch[step]
        losses, correct, count = engine.forward_backward(step, it, alive)
        bad_at = torch.where((bad_at < 0) & ~torch.isfinite(losses), it, bad_at)
        sums[:, 0] += losses.double() * count
        sums[:, 1] += correct
        sums[:, 2] += count
        log_row = it % stride == 0
        grad_norms = engine.grad_norms() if log_row else None
        engine.step(lrs, lrs_device[step])
        it += 1
        due_eval = it % eval_every == 0 or it == total
        if log_row or it % log_every == 0 or due_eval:
            for i, bad in enumerate(engine.first_flagged(bad_at)):
                if bad >= 0 and not recs[i].ended:
                    log.warning("trial %s diverged: non-finite loss at iteration %d", recs[i].tid, bad)
                    recs[i].finish(it, "diverged", diverged_at=bad, reason=f"non-finite loss at iteration {bad}")
                    alive[i] = False
            live = [i for i, r in enumerate(recs) if not r.ended]
        now = time.perf_counter()
        rate = (it - it_mark) * B / max(now - t_mark, 1e-9)  # per member
        weight_norms = engine.weight_norms() if live and (log_row or due_eval) else None
        if log_row and live:
            step_losses = engine.step_losses(losses)
            for i in live:
                recs[i].add(metrics.row("step", "train", epoch=(it - 1) / spe, iteration=it - 1, lr=lrs[i][-1],
                                        loss=step_losses[i], grad_norm=grad_norms[i], weight_norm=weight_norms[i],
                                        wall_time=now - t_start, images_per_s=rate))
        if it % log_every == 0 and engine.main and live:
            progress(label, it, total, spe, losses[alive].mean().item() if live else metrics.NAN, lrs[0][-1], rate * K,
                     B * K)
        if due_eval and live:
            splits = {"train": engine.reduce(sums.clone())}
            splits.update({name: engine.evaluate(s) for name, s in (("val", ds.val), ("test", ds.test))
                           if s is not None})
            sums.zero_()
            for i in live:
                at = dict(epoch=it / spe, iteration=it, lr=lrs[i][-1], weight_norm=weight_norms[i],
                          wall_time=now - t_start, images_per_s=rate)
                for name, s in splits.items():
                    recs[i].add(metrics.row("eval", name, loss=(s[i, 0] / s[i, 2]).item(),
                                            accuracy=(s[i, 1] / s[i, 2]).item(), **at))
                recs[i].save_last(it, engine.member_state(i), engine.optimizer_state(i), time.perf_counter() - t_start)
        if log_row or due_eval:  # each row's images/s covers the iterations since the previous row
            t_mark, it_mark = time.perf_counter(), it
    for i in live:
        recs[i].save_named(it, lambda i=i: engine.member_state(i))
        recs[i].finish(it, "done")
