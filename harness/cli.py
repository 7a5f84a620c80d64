"""`heurbench` console script: train, sweep, slurm, analyze, report, quickstart.

Each sub-command imports its heavy dependencies (Ray, submitit, matplotlib) only when
it runs. A bad config or data set exits 2 with one line on stderr, no traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harness.config import ConfigError


def cmd_train(args) -> int:
    from harness.config import load_trial
    from harness.train import run_trial

    cfg = load_trial(args.config)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    state = run_trial(cfg, out, resume=args.resume)
    print(f"{state}: {out / 'trials' / cfg.trial_id()}  (metrics: pd.read_parquet('{out / 'metrics'}'))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heurbench", description=__doc__.splitlines()[0])
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one trial from a YAML config")
    t.add_argument("config")
    t.add_argument("--out", help="results folder (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.set_defaults(func=cmd_train)

    for module in ("harness.sweep", "slurm.launch", "analysis.cli", "analysis.report", "harness.quickstart"):
        __import__(module, fromlist=["add_parser"]).add_parser(sub)  # each imports Ray/submitit only when run
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from harness.data import DataError

    try:
        return args.func(args) or 0
    except (ConfigError, DataError, FileNotFoundError) as err:
        print(f"heurbench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
