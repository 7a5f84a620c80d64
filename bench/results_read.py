"""Read time of a paper-scale results tree before and after compaction (heurbench.results, harness.metrics).

Writes a synthetic tree of --trials trials over --sweeps sweeps, each trial a real resolved config.yaml,
status.json and one metrics part per evaluation with the rows a run writes (harness.metrics FIELDS: per
evaluation --steps step rows and a train and a test eval row), then times `results.load` of one sweep and
of a filtered cross-sweep query (every trial with data.batch_size 5000), compacts every trial, and times
them again. Each time is the best of --repeats reads (the first read is reported too), with the CPU
seconds of that read (all threads): on a shared machine, the wall time is mostly other processes' load.
Usage: python bench/results_read.py [--trials 1000] [--evals 200] [--sweeps 4] [--steps 4] [--root DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.config import dump, parse_trial
from harness.layout import RunDir
from harness.metrics import FIELDS, tag_columns
from harness.storage import write_json, write_text
from heurbench import results

BATCHES = (500, 1000, 5000, 8000)
BASE = {"model": {"name": "resnet18"}, "data": {"name": "digits", "batch_size": 500},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"}, "budget": {"epochs": 200}, "eval": {"every": 1, "unit": "epoch"}}


def trial_config(sweep: str, i: int):
    """Trial i of a sweep: batch size x warmup length x eta_init (a number or catapult) x seed."""
    batch, length = BATCHES[i % 4], 5 * (i // 4 % 5)
    raw = {**BASE, "name": f"{sweep}-{i:03d}", "seed": i // 20,
           "data": {**BASE["data"], "batch_size": batch},
           "optim": {**BASE["optim"], "lr": 0.1 * batch / 500},
           "warmup": {"length": length, "unit": "epoch", "eta_init": "catapult" if i % 2 else 0.0},
           "freeze": {"groups": ["features"] if i % 3 == 0 else [], "length": 2 if i % 3 == 0 else 0}}
    swept = {"data.batch_size": batch, "warmup": raw["warmup"], "optim.lr": raw["optim"]["lr"]}
    return parse_trial(raw), swept


def write_tree(root: Path, sweeps: int, trials: int, evals: int, steps: int, seed: int = 0) -> None:
    """The synthetic tree; metrics parts written the way MetricsWriter writes them (one table per part)."""
    rng = np.random.default_rng(seed)
    per = trials // sweeps
    for s in range(sweeps):
        name, run = f"s{s + 1}", RunDir(root / f"s{s + 1}")
        cfgs = [trial_config(name, i) for i in range(per)]
        tags = tag_columns([swept for _, swept in cfgs])
        for (cfg, _), tag in zip(cfgs, tags):
            tid = cfg.trial_id()
            write_text(run.trial(tid).config, dump(cfg))
            write_json(run.trial(tid).status, {"state": "done", "iteration": evals * 100, "total": evals * 100})
            run.metrics_of(tid).mkdir(parents=True)
            base = {"sweep": name, "trial_id": tid, **tag, "seed": cfg.seed, "world_size": 1}
            n = steps + 2
            for e in range(evals):
                it = (e + 1) * 100
                cols = {k: [v] * n for k, v in base.items()}
                cols.update(kind=["step"] * steps + ["eval"] * 2, split=["train"] * (steps + 1) + ["test"],
                            iteration=[it - 100 + 25 * j for j in range(steps)] + [it, it])
                cols["epoch"] = [i / 100 for i in cols["iteration"]]
                for k in ("lr", "loss", "accuracy", "grad_norm", "weight_norm", "wall_time", "images_per_s"):
                    cols[k] = rng.random(n).tolist()
                table = pa.table({k: cols[k] for k in [*base, *FIELDS]})
                pq.write_table(table, run.metrics_part(tid, e))


def files(root: Path) -> tuple[int, int]:
    """Metrics files in sweep s1 and in the whole tree."""
    return len(list(root.glob("s1/metrics/*/*.parquet"))), len(list(root.glob("*/metrics/*/*.parquet")))


def timed(fn, repeats: int) -> tuple[float, float, float, int]:
    """(first, best) wall seconds of `fn()`, the CPU seconds of the best, and the rows it returned. On a shared
    machine the CPU seconds (all threads) say more than the wall time."""
    times, n = [], 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        n = len(fn())
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times[0][0], *min(times), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--evals", type=int, default=200)
    ap.add_argument("--sweeps", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="step rows per evaluation")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--root", help="results root to write (default: a temp folder, removed at the end)")
    args = ap.parse_args()
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="results_read."))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; tree under {root}")
    try:
        t0 = time.perf_counter()
        write_tree(root, args.sweeps, args.trials, args.evals, args.steps)
        print(f"wrote {args.trials} trials x {args.evals} evaluations over {args.sweeps} sweeps in "
              f"{time.perf_counter() - t0:.0f} s")
        queries = {"one sweep (s1)": lambda: results.load(root, sweep="s1"),
                   "data.batch_size 5000, all sweeps": lambda: results.load(root, where={"data.batch_size": 5000}),
                   "same, test rows only": lambda: results.load(root, where={"data.batch_size": 5000,
                                                                                "split": "test"})}
        for stage in ("before", "after"):
            if stage == "after":
                t0 = time.perf_counter()
                merged = results.compact(root)
                print(f"compacted {merged} trials in {time.perf_counter() - t0:.1f} s")
            one, total = files(root)
            print(f"{stage} compaction: {total} metrics files ({one} in s1); load average "
                  f"{os.getloadavg()[0]:.1f}")
            for label, fn in queries.items():
                first, best, cpu, n = timed(fn, args.repeats)
                print(f"  {label:34s} {n:>9,d} rows  first {first:6.2f} s  best {best:6.2f} s  (CPU {cpu:.2f} s)")
    finally:
        if not args.root:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
