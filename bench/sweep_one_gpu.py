"""Run a sweep on this machine's GPU without Ray: the jobs `heurbench sweep` would give Ray Tune (single
trials, or packs of `resources.pack` trials; `auto` probed in this process), each in its own process, all at
once on the one device.

For a GPU machine that lacks Ray (the lent device of bench/gpu_checks.sh: Ray's wheel is too large to
carry there); everywhere else `heurbench sweep` is the way. Finished trials are skipped, so a re-run resumes.
Usage: python bench/sweep_one_gpu.py SWEEP.yaml [--out runs]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.grid import FINISHED, load_sweep, state_of, write_resolved  # noqa: E402
from harness.pack import jobs as pack_jobs, probe  # noqa: E402
from harness.runner import log_to_stderr, run_job  # noqa: E402


def job(args) -> list[str]:
    cfgs, out = args
    log_to_stderr()
    return run_job(cfgs, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--out", default="runs")
    a = ap.parse_args()
    sweep = load_sweep(a.sweep)
    out = Path(a.out).resolve() / sweep.name
    write_resolved(sweep, out)
    todo = [p for p in sweep.points if state_of(out, p) not in FINISHED]
    size = sweep.spec.resources.pack
    if size == "auto" and todo:
        size, _ = probe(todo[0].cfg)
    jobs = [[p.cfg for p in job] for job in pack_jobs(todo, size)]
    print(f"sweep {sweep.name}: {len(sweep.points)} trials, {len(todo)} to run as {len(jobs)} processes "
          f"({', '.join(str(len(j)) for j in jobs)} trials each) -> {out}", flush=True)
    t = time.perf_counter()
    if jobs:
        with mp.get_context("spawn").Pool(len(jobs)) as pool:
            states = pool.map(job, [(j, out) for j in jobs])
        print(f"sweep {sweep.name}: {[s for ss in states for s in ss]} in {time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
