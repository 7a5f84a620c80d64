"""`heurbench sweep plan --estimate`: a sweep's GPU-hours and a SLURM --time from a short measured probe.

Each distinct setting a step's time depends on (model, batch sizes, optimizer, perf) is built once and timed
on this machine's device: a few training steps (forward, backward, optimizer step) and evaluation batches on
random data of the data set's shape, after untimed warm-up steps. A trial's time is then
iterations x s/iteration + evaluations x batches per evaluation x s/evaluation batch.
"""
from __future__ import annotations

import logging
import math
import operator
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from harness import optim
from harness.config import DataCfg, TrialConfig
from harness.grid import Sweep
from harness.data import CLASSES
from harness.models import build
from harness.trial import autocast, eval_interval, memory_format

log = logging.getLogger("heurbench.estimate")

SHAPE = (3, 32, 32)  # every data set is held as 32x32 RGB (harness.data)
SIZES = {"cifar10": (50000, 10000), "cifar100": (50000, 10000), "digits": (1437, 360)}  # (train, test) images
SLURM_MARGIN = 1.5  # --time: the longest trial times this
PHASE_SECONDS = 20.0  # a probe's warm-up, then its timed steps, each stop after the first call past this


def split_sizes(data: DataCfg) -> tuple[int, int, int]:
    """(train, val, test) images of a trial, after subsetting and the val hold-out."""
    if data.name in SIZES:
        train, test = SIZES[data.name]
    else:  # a Parquet folder: the row counts in the files' footers
        import pyarrow.parquet as pq

        train, test = (pq.ParquetFile(Path(data.root) / f"{s}.parquet").metadata.num_rows for s in ("train", "test"))
    train = min(train, data.train_subset or train)
    return train - data.val_size, data.val_size, min(test, data.test_subset or test)


SETTING = ("model.name", "model.width", "model.bn", "model.dropout", "data.batch_size", "data.eval_batch_size",
           "optim.name", "perf.device", "perf.bf16", "perf.channels_last", "perf.compile")  # what a step's time depends on


def setting(cfg: TrialConfig) -> str:
    """The values of SETTING, as the label of a probe."""
    return " ".join(f"{k}={operator.attrgetter(k)(cfg)}" for k in SETTING)


def local_device(cfg: TrialConfig) -> torch.device:
    """The device this machine would train `cfg` on (perf.device; auto: CUDA when there is one)."""
    return torch.device("cuda" if cfg.perf.device != "cpu" and torch.cuda.is_available() else "cpu")


def timed(fn: Callable[[], None], steps: int, warmup: int, device: torch.device,
          budget: float = PHASE_SECONDS) -> float:
    """Mean seconds of `fn` over up to `steps` calls after up to `warmup` untimed ones; each phase stops early
    (after one call) once it has taken `budget` seconds, so a slow setting (a large batch on a CPU) probes in
    about 2 x `budget`."""
    def run(n: int) -> tuple[int, float]:
        t, done = time.perf_counter(), 0
        while done < n and (done == 0 or time.perf_counter() - t < budget):
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            done += 1
        return done, time.perf_counter() - t

    run(warmup)
    done, seconds = run(steps)
    return seconds / done


def probe(cfg: TrialConfig, device: torch.device, steps: int = 5, warmup: int = 2) -> tuple[float, float]:
    """(seconds per training iteration, seconds per evaluation batch) of `cfg`'s model on `device`."""
    classes = CLASSES.get(cfg.data.name, 10)
    model = build({**cfg.model.model_dump(mode="json"), "num_classes": classes, "in_channels": SHAPE[0]}).to(device)
    mem, amp = memory_format(cfg), autocast(cfg, device)
    model = model.to(memory_format=mem)
    opt = optim.build(cfg.optim, model)
    net = torch.compile(model, mode=cfg.perf.compile) if cfg.perf.compile else model

    def batch(n: int):
        x = torch.randn(n, *SHAPE, device=device).contiguous(memory_format=mem)
        return x, torch.randint(0, classes, (n,), device=device)
    x, y = batch(cfg.data.batch_size)
    xe, _ = batch(cfg.data.eval_batch_size)

    def train_step():
        with amp():
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def eval_batch():
        with amp():
            net(xe).argmax(1)
    net.train()
    s_iter = timed(train_step, steps, warmup, device)
    net.eval()
    return s_iter, timed(eval_batch, steps, warmup, device)


@dataclass
class Row:
    """One distinct setting: its probe and the sweep's trials that have it."""
    label: str
    s_per_iteration: float
    s_per_eval_batch: float
    trials: int = 0
    seconds: float = 0.0
    longest: float = 0.0  # the longest trial's seconds
    device: str = ""


def trial_seconds(cfg: TrialConfig, s_iter: float, s_eval: float) -> float:
    """One trial's seconds from its probe: iterations x s_iter + evaluation batches x s_eval."""
    train, val, test = split_sizes(cfg.data)
    spe = max(1, train // cfg.data.batch_size)
    total = cfg.budget.iterations or cfg.budget.epochs * spe
    evals = math.ceil(total / eval_interval(cfg, spe))  # every interval and at the end
    eval_batches = evals * sum(math.ceil(n / cfg.data.eval_batch_size) for n in (val, test))
    return total * s_iter + eval_batches * s_eval


def estimate(sweep: Sweep, steps: int = 5) -> list[Row]:
    """Every point of `sweep` (streamed) timed by the probe of its setting on its local device, one Row per
    distinct setting."""
    rows: dict[str, Row] = {}
    for p in sweep.stream():
        key = setting(p.cfg)
        if key not in rows:
            device = local_device(p.cfg)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
            log.info("probe %d: %s on %s (%d steps, the first point: %d)", len(rows) + 1, key, name, steps, p.index)
            t = time.perf_counter()
            rows[key] = Row(key, *probe(p.cfg, device, steps), device=f"{device} ({name})")
            log.info("probe %d: %.4g s/iteration, %.4g s/eval batch (took %.0f s)", len(rows),
                     rows[key].s_per_iteration, rows[key].s_per_eval_batch, time.perf_counter() - t)
        r = rows[key]
        seconds = trial_seconds(p.cfg, r.s_per_iteration, r.s_per_eval_batch)
        r.trials += 1
        r.seconds += seconds
        r.longest = max(r.longest, seconds)
    return list(rows.values())


def hms(seconds: float) -> str:
    s = math.ceil(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def report(sweep: Sweep) -> Iterator[str]:
    """`sweep plan --estimate`'s lines: a table of the distinct settings and the sweep's total."""
    rows = estimate(sweep)
    gpus = sweep.spec.resources.gpus_per_trial
    yield (f"estimate for sweep {sweep.name} (probe per setting: up to 5 timed steps after up to 2 warm-up "
           f"steps, each phase cut at {PHASE_SECONDS:g} s):")
    yield f"{'s/iteration':>12}  {'s/eval batch':>12}  {'trials':>7}  {'hours':>9}  device  setting"
    for r in rows:
        yield (f"{r.s_per_iteration:12.4g}  {r.s_per_eval_batch:12.4g}  {r.trials:7d}  {r.seconds / 3600:9.3f}  "
               f"{r.device}  {r.label}")
    hours = sum(r.seconds for r in rows) / 3600
    longest = max((r.longest for r in rows), default=0.0)
    yield (f"total: {hours:.3f} trial-hours, {hours * gpus:.3f} GPU-hours at {gpus:g} GPU per trial; "
           f"SLURM --time={hms(longest * SLURM_MARGIN)} per trial (the longest, x{SLURM_MARGIN:g})")
    if gpus > 0 and any(r.device.startswith("cpu") for r in rows):
        yield ("note: probed on this machine's CPU, but the trials ask for GPUs: the hours above are CPU hours "
               "(an upper bound); run the estimate on a GPU node for GPU-hours")
