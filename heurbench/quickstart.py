"""`heurbench quickstart`: the README's main job, offline on 2 CPU cores in a few minutes.

A reduced S3 (SB / LB / LB + warmup / LB + FC freeze) on the embedded digits data: the
Ray Tune sweep (4 runs x 8 seeds), then the report (CCA heatmaps and diagonals, accuracy curves over seeds)
and S3's claims table, printed at the end.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from analysis import claims
from analysis.report import report
from harness.grid import load_sweep
from harness.layout import RunDir
from harness.tune_driver import run_sweep

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"


def cmd_quickstart(args) -> int:
    t0 = time.time()
    sweep = load_sweep(args.sweep)
    counts = run_sweep(sweep, Path(args.out), address=args.address, num_cpus=args.num_cpus)
    run = RunDir(Path(args.out).resolve() / sweep.name)
    summary = report(run.path)
    print("\nS3 claims over seeds (95% intervals, method per row; rules in analysis/studies/s3_warmup.py):\n")
    print(claims.markdown(pd.read_parquet(run.report_table("claims"))))
    print(f"\nquickstart finished in {time.time() - t0:.0f} s: trials {counts}")
    print(f"report:  {summary}\nfigures: {run.figures}")
    print(f"metrics: python3 -c \"from heurbench import results; df = results.load('{run.path}', "
          f"where={{'split': 'test'}}); print(df.groupby(['tags.run', 'seed']).accuracy.max())\"")
    return 0


def add_parser(sub, help: str) -> None:
    p = sub.add_parser("quickstart", help=help)
    p.add_argument("--out", default="runs", help="results root (default runs)")
    p.add_argument("--sweep", default=str(QUICKSTART), help="the sweep YAML (default: sweeps/quickstart.yaml)")
    p.add_argument("--address", help="an existing Ray cluster ('auto' or host:port); default: a new local one")
    p.add_argument("--num-cpus", type=int, help="CPUs for the new local Ray cluster (default: all)")
    p.set_defaults(func=cmd_quickstart)
