"""`heurbench quickstart`: the README's main job, offline on 2 CPU cores in a few minutes.

A reduced S3 (SB / LB / LB + warmup / LB + FC freeze) on the embedded digits data: the
Ray Tune sweep, then the report (CCA heatmaps and diagonals, accuracy curves).
"""
from __future__ import annotations

import time
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "quickstart.yaml"


def cmd_quickstart(args) -> int:
    from analysis.report import report
    from harness.sweep import load_sweep, run_sweep

    t0 = time.time()
    sweep = load_sweep(args.sweep)
    counts = run_sweep(sweep, Path(args.out), num_cpus=args.num_cpus)
    run_dir = Path(args.out).resolve() / sweep.name
    summary = report(run_dir)
    print(f"\nquickstart finished in {time.time() - t0:.0f} s: trials {counts}")
    print(f"report:  {summary}\nfigures: {run_dir / 'figures'}")
    print(f"metrics: python3 -c \"import pandas as pd; df = pd.read_parquet('{run_dir / 'metrics'}'); "
          f"print(df[df.split == 'test'].groupby('tags.run').accuracy.max())\"")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("quickstart", help="reduced S3 on the embedded digits data: sweep, CCA, figures (CPU, offline)")
    p.add_argument("--out", default="runs", help="results root (default runs)")
    p.add_argument("--sweep", default=str(QUICKSTART), help="the sweep YAML (default: sweeps/quickstart.yaml)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray cluster (default: all)")
    p.set_defaults(func=cmd_quickstart)
