"""Which trials of a sweep may train together as one stack of models (harness/stacked_engine.py), and the
probe that picks a pack size for `resources.pack: auto`.

Members may differ in seed (init and data order), SGD's lr / momentum / weight decay /
nesterov, schedule, warmup and tags; each member writes exactly the files a plain trial
writes (metrics, checkpoints, status), so a packed trial can be resumed unpacked and the
other way round.
"""
from __future__ import annotations

import json
import logging
import time

import torch

from harness import data as data_mod, distributed
from harness.config import TrialConfig
from harness.errors import ConfigError
from harness.grid import flatten
from harness.heuristics import unstackable
from harness.models import build
from harness.stacked_engine import Stack, member_batches
from harness.trial import model_spec

log = logging.getLogger("heurbench.train")

# Keys in which the members of one pack may differ; everything else must be equal.
FREE = {"name", "seed", "tags", "schedule", "warmup",
        "optim.lr", "optim.momentum", "optim.weight_decay", "optim.nesterov", "model.init_from"}


def is_free(key: str) -> bool:
    """Whether a dotted config key may differ between the members of a pack."""
    return any(key == f or key.startswith(f + ".") for f in FREE)


def pack_key(cfg: TrialConfig) -> str:
    """Equal for trials that may share a pack: their settings outside FREE."""
    shared = flatten(cfg.model_dump(mode="json"), keep=is_free)
    return json.dumps({k: v for k, v in shared.items() if not is_free(k)}, sort_keys=True)


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


def jobs(points: list, size: int) -> list[list]:
    """Sweep points (harness.grid.Point) as the jobs one process each trains: one point each at size 1, else
    packs of at most `size` (`packs`)."""
    if size == 1:
        return [[p] for p in points]
    return [[points[i] for i in idx] for idx in packs([p.cfg for p in points], size)]


def check_packable(cfgs: list[TrialConfig]) -> None:
    """ConfigError naming the first setting that keeps these trials out of one pack."""
    first = flatten(cfgs[0].model_dump(mode="json"), keep=is_free)
    for c in cfgs:
        if c.optim.name != "sgd":
            raise ConfigError(f"optim.name = {c.optim.name!r}: packed trials train with sgd only")
        why = unstackable(c)
        if why:
            raise ConfigError(f"trial {c.trial_id()}: {why}, which a pack (the stacked engine) cannot run")
        mine = flatten(c.model_dump(mode="json"), keep=is_free)
        for k in sorted(set(first) | set(mine)):
            if not is_free(k) and first.get(k) != mine.get(k):
                raise ConfigError(f"{k}: {first.get(k)!r} vs {mine.get(k)!r}: trials in one pack must share it "
                                  f"(they may differ only in {', '.join(sorted(FREE))})")


def probe(cfg: TrialConfig, sizes: tuple[int, ...] = (1, 2, 4, 8, 16), iters: int = 5,
          memory_fraction: float = 0.8) -> tuple[int, list[dict]]:
    """Measure one training step of `cfg`'s model stacked K times for each K in `sizes` on its device:
    aggregate images/s and peak memory. Returns the pack size with the best aggregate rate (a larger K
    only when it gains 10% or more, and only while memory stays under `memory_fraction` of the device's)
    and the measured rows. Stops at the first K that gains less: past saturation (a CPU, or a GPU that one
    model already fills) larger packs only cost probe time."""
    d, device = distributed.setup(cfg.perf.device)
    try:
        ds = data_mod.load(cfg.data).to(device)
        spec, B, rows = model_spec(cfg, ds), cfg.data.batch_size, []
        cuda = device.type == "cuda"
        limit = torch.cuda.get_device_properties(device).total_memory * memory_fraction if cuda else float("inf")
        plan = data_mod.plan_epoch(ds, cfg.seed, 0, 1, B, cfg.data.augment)
        best = None
        for k in sizes:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                st = Stack([build(spec).to(device) for _ in range(k)], [cfg] * k, ds, device)
                x, y = member_batches(ds, [plan] * k, 0)
                alive, lrs = torch.ones(k, dtype=torch.bool, device=device), torch.full((k, 1), cfg.optim.lr,
                                                                                       device=device)
                for i in range(iters + 2):  # two untimed warm-up steps
                    if i == 2:
                        if cuda:
                            torch.cuda.synchronize(device)
                        t0 = time.perf_counter()
                    st.backward(x, y, alive)
                    st.sgd_step(lrs)
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
            if best is not None and rate < 1.1 * best["images_per_s"]:
                break
            best = rows[-1]
        return (best or {"pack": 1})["pack"], rows
    finally:
        distributed.teardown(d)
