"""`heurbench` console script: train, sweep, slurm, analyze, report, quickstart, results, plugins.

Each sub-command imports its heavy dependencies (Ray, submitit, matplotlib; torch and pandas
for analyze, report, quickstart and results, whose parsers load only for them) only when
it runs. A bad config, data set, checkpoint or results file exits 2 with one line on stderr
(`heurbench: error: ...`), no traceback; an OS failure (disk full) exits 1 the same way.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from harness.errors import CheckpointError, ConfigError, DataError, ResultsError
from harness.grid import FINISHED, in_order, load_sweep, plan, read_sweep, seed_list, write_resolved
from harness.layout import RunDir
from harness.runner import mark_failed, run_point
from harness.tune_driver import LOOPBACK, run_sweep
from slurm.launch import add_parser as add_slurm


def cmd_train(args) -> int:
    from harness.config import load_trial

    cfg = load_trial(args.config)  # validated before torch loads: a config error is one line at once
    from harness.train import run_trial

    run = RunDir(args.out if args.out else Path("runs") / cfg.name)
    trial = run.trial(cfg.trial_id())
    if args.resume and not trial.last.exists() and trial.read_status().get("state") not in FINISHED:
        raise ConfigError(f"--resume: {trial.last} does not exist, so there is nothing to resume; "
                          f"run without --resume to start this trial afresh")
    try:
        state = run_trial(cfg, run.path, resume=args.resume)
    except Exception as err:
        mark_failed(run.path, [cfg], err)
        raise
    print(f"{state}: {run.trial(cfg.trial_id()).path}  (rows: from heurbench import results; "
          f"results.load('{run.path}'))")
    return 0


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train one trial from a YAML config")
    t.add_argument("config")
    t.add_argument("--out", help="results folder (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.set_defaults(func=cmd_train)


def cmd_sweep(args) -> int:
    seeds = seed_list(args.seeds) if args.seeds else None
    if args.target == "plan":
        for s in in_order(need_yaml(args), read_sweep, seeds=seeds):
            out = Path(args.out) / s.name if args.out else None
            for line in plan(s, out if out and out.exists() else None, None if args.all else 10):
                print(line, flush=True)
            if args.estimate:
                from harness.estimate import report

                for line in report(s):
                    print(line, flush=True)
        return 0
    if args.target == "trial":
        sweep = load_sweep(need_yaml(args), seeds)
        if not 0 <= args.index < len(sweep.points):
            raise ConfigError(f"--index {args.index}: sweep {sweep.name} has points 0..{len(sweep.points) - 1}")
        out = Path(args.out).resolve() / sweep.name
        write_resolved(sweep, out)
        state = run_point(sweep.points[args.index].cfg, out)
        print(f"{state}: point {args.index} of {sweep.name}")
        return 0
    if args.config:
        raise ConfigError(f"unexpected argument {args.config!r} (usage: heurbench sweep x.yaml | sweep plan x.yaml)")
    failed = 0
    for s in in_order(args.target, seeds=seeds):
        counts = run_sweep(s, Path(args.out), args.address, args.num_cpus, args.num_gpus, wait=args.wait,
                           node_ip=args.node_ip)
        failed += counts.get("failed", 0) + counts.get("running", 0) + counts.get("pending", 0)
    return 1 if failed else 0


def need_yaml(args) -> str:
    if not args.config:
        raise ConfigError(f"heurbench sweep {args.target}: missing the sweep YAML")
    return args.config


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep YAML with Ray Tune; `sweep plan x.yaml` prints its trials",
                       description="heurbench sweep x.yaml | sweep plan x.yaml | sweep trial x.yaml --index I")
    p.add_argument("target", help="a sweep YAML to run, or 'plan' / 'trial' followed by one")
    p.add_argument("config", nargs="?", help="the sweep YAML after 'plan' or 'trial'")
    p.add_argument("--out", default="runs", help="results root; the sweep writes to OUT/<name> (default runs)")
    p.add_argument("--address", help="an existing Ray cluster ('auto' or host:port); default: a local one")
    p.add_argument("--node-ip", default=LOOPBACK, metavar="IP",
                   help="IP of the local Ray cluster's node (default 127.0.0.1: its ports listen on loopback only; "
                        "this host's IP lets other machines join it, and Ray then listens on all interfaces)")
    p.add_argument("--num-cpus", type=int, default=int(os.environ.get("SLURM_CPUS_ON_NODE", 0)) or None,
                   help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray cluster (default: all visible)")
    p.add_argument("--seeds", metavar="LIST",
                   help="the named sweep's seeds instead of its YAML's `seeds:`, e.g. 0-9 or 0,3,5 (not those of the "
                        "sweeps it depends on); finished trials are kept, only the new seeds train")
    p.add_argument("--index", type=int, default=0, help="'trial': the grid point to run in this process")
    p.add_argument("--all", action="store_true", help="'plan': list every trial (default: the first 10)")
    p.add_argument("--estimate", action="store_true",
                   help="'plan': GPU-hours and a SLURM --time from a few timed steps of each distinct model/batch")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="if another driver is running this sweep, wait up to SECONDS for it to finish "
                        "(default 0: exit 2 at once with one line naming it)")
    p.set_defaults(func=cmd_sweep)


def cmd_plugins(args) -> int:
    from harness.yamlfile import read_yaml
    from harness.registry import KINDS, import_plugins, register

    for path in args.yaml:  # a trial or sweep YAML's `plugins:`, found next to it
        raw = read_yaml(path)
        listed = raw.get("plugins") if isinstance(raw, dict) else None
        import_plugins([m for m in listed or [] if isinstance(m, str)], near=Path(path).parent)
    register.load_all()
    import analysis.study  # noqa: F401  (the study contract)

    for kind in KINDS:
        for name in register.names(kind):
            e = register.get(kind, name)
            o = e.origin()
            where = "built in" if e.builtin else " ".join(
                [f"{o['package']} {o['version']}"] * ("package" in o) + [f"sha256 {o['sha256']}"] * ("sha256" in o))
            print(f"{kind:9s}  {name:20s}  {e.module}  ({where})")
    return 0


def add_plugins(sub) -> None:
    p = sub.add_parser("plugins", help="list every registered component (built in and plug-in) and its module",
                       description="Every model, data set, optimizer, schedule, heuristic and study: built in, "
                                   "from an installed package's 'heurbench.plugins' entry points, and from the "
                                   "`plugins:` of the YAMLs named.")
    p.add_argument("yaml", nargs="*", help="trial or sweep YAMLs whose `plugins:` to import too")
    p.set_defaults(func=cmd_plugins)


COMMANDS = {"train": add_train, "sweep": add_sweep, "slurm": add_slurm, "plugins": add_plugins}
HEAVY = {"analyze": ("analysis.cli", "analyses of saved checkpoints (results as Parquet + PNG)"),
         "report": ("analysis.report", "run a study's analyses on a sweep's checkpoints; figures + tables + report.md"),
         "quickstart": ("heurbench.quickstart",
                        "reduced S3 on the embedded digits data: sweep, CCA, figures (CPU, offline)"),
         "results": ("heurbench.results", "'results compact ROOT': merge each ended trial's metrics parts into one "
                                          "(trials do it when they end; this is for older trees)")}
"""Commands whose parser's module imports torch or pandas, with their one-line help: the module's
`add_parser(sub, help)` loads only when that command runs; `--help` and a mistyped command see a stub."""


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser for the arguments `argv` (default sys.argv[1:])."""
    p = argparse.ArgumentParser(prog="heurbench", description=__doc__.splitlines()[0])
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="heurbench's debug lines too (e.g. each underdetermined CCA layer pair)")
    sub = p.add_subparsers(dest="command", required=True)
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for add in COMMANDS.values():
        add(sub)
    for name, (module, text) in HEAVY.items():
        if command == name:
            importlib.import_module(module).add_parser(sub, text)
        else:
            sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv=None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.verbose:
        logging.getLogger("heurbench").setLevel(logging.DEBUG)
    try:
        return args.func(args) or 0
    except (ConfigError, DataError, CheckpointError, ResultsError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, PermissionError) as err:  # bad input: exit 2
        return error(err, 2)
    except OSError as err:  # the machine (disk full, I/O error): exit 1, still one line
        return error(err, 1)
    except Exception as err:
        arrow = sys.modules.get("pyarrow")
        if arrow is not None and isinstance(err, arrow.ArrowInvalid):  # a truncated or corrupt metrics part
            return error(ResultsError(f"a results file is unreadable: {err}"), 2)
        raise


def error(err: Exception, code: int) -> int:
    """Print `err` as the one line `heurbench: error: ...` on stderr; return the exit code."""
    print(f"heurbench: error: {' '.join(str(err).split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
