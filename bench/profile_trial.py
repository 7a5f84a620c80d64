"""What limits a training step: torch.profiler over steady-state steps of heurbench's real trial loop.

Runs the trial bench/throughput.py times (same config, its fast path), or a stack of --pack K of them,
and profiles `--active` steps after the first `--iters - --active - 2` (compilation and warm-up left
out). Prints the top ops by GPU time and by host time, and the share of the profiled steps' wall time in which no
kernel ran on the device (the GPU's idle share: launch overhead, host work, synchronisation).
Usage: python bench/profile_trial.py --model vgg16 --batch 100 [--pack 8] [--iters 120] [--active 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import bench_cfg  # noqa: E402

from harness.module_engine import ModuleEngine  # noqa: E402
from harness.stacked_engine import Stack  # noqa: E402
from harness.train import run_pack, run_trial  # noqa: E402


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def idle_share(events) -> tuple[float, float]:
    """(profiled steps' wall time in ms, share of it with no kernel running), from one profiler cycle's events."""
    steps = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("ProfilerStep")]
    lo, hi = min(a for a, _ in steps), max(b for _, b in steps)
    kernels = [(max(e.time_range.start, lo), min(e.time_range.end, hi)) for e in events
               if e.device_type == DeviceType.CUDA and not e.is_user_annotation  # a range drawn on the GPU's
               and e.time_range.end > lo and e.time_range.start < hi]            # timeline, not a kernel
    return (hi - lo) / 1e3, 1 - union_us(kernels) / (hi - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--pack", type=int, default=1)
    ap.add_argument("--iters", type=int, default=120)
    ap.add_argument("--active", type=int, default=20)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfgs = [bench_cfg(a.model, a.batch, a.iters, device, seed=s) for s in range(a.pack)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    wait = a.iters - a.active - 2
    with profile(activities=activities, schedule=schedule(wait=wait, warmup=1, active=a.active, repeat=1)) as prof:
        engine = Stack if a.pack > 1 else ModuleEngine
        plain_step = engine.step

        def step(self, lrs, lr_row):  # the loop's optimizer step, then one profiler tick
            plain_step(self, lrs, lr_row)
            prof.step()

        engine.step = step
        with tempfile.TemporaryDirectory() as tmp:
            run_pack(cfgs, tmp) if a.pack > 1 else run_trial(cfgs[0], tmp)
    events = prof.events()
    ms, idle = idle_share(events)
    label = f"{a.model} bs {a.batch}" + (f" pack {a.pack}" if a.pack > 1 else "")
    print(f"{label}: {a.active} steps profiled, {ms / a.active:.2f} ms/step, device idle {100 * idle:.1f}% "
          f"of the steps' wall time")
    for key in ("self_device_time_total", "self_cpu_time_total")[device.type != "cuda":]:
        print(prof.key_averages().table(sort_by=key, row_limit=a.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
