"""Sweeps: a base trial config plus a grid, expanded to validated trial configs and run with Ray Tune.

    name: s3_warmup
    base_file: ../trials/vgg11.yaml          # or base: {a trial config mapping}
    grid: {data.batch_size: [100, 5000], warmup.length: [0, 200]}     # cartesian axes, dotted keys
    zip: [{freeze.groups: [[], [fc_stack]], freeze.length: [0, 200]}]  # lists varied together
    overrides: [{when: {data.batch_size: 5000}, set: {optim.lr: 2.5}}]  # batch 5000 implies lr 2.5
    seeds: [0, 1, 2]                         # one more axis (varies fastest)
    resources: {gpus_per_trial: 0.25, cpus_per_trial: 2, workers_per_trial: 1}
    depends_on: [teacher.yaml]               # sweeps run (or submitted) before this one

Every swept key becomes a metrics column (`tags`). One Tune trial per grid point; each
calls `run_trial(..., resume=True)`, so re-running a sweep skips finished trials and
resumes the others from their checkpoints. DDP trials (`workers_per_trial > 1`) launch
`torch.distributed.run` on the trial's node (ranks on one node; multi-node DDP trials go
through `heurbench slurm submit`).
"""
from __future__ import annotations

import copy
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from harness.config import ConfigError, Strict, TrialConfig, dump, format_error, load_trial, parse_trial, read_yaml
from harness.record import tag_columns
from harness.storage import write_json, write_text

log = logging.getLogger("heurbench.sweep")
FINISHED = ("done", "diverged")


class Resources(Strict):
    gpus_per_trial: float = Field(0, ge=0, description="total GPUs of a trial; a fraction lets trials share a GPU")
    cpus_per_trial: float = Field(1, gt=0, description="total CPUs of a trial")
    workers_per_trial: int = Field(1, ge=1, description="DDP processes of a trial (on one node)")
    pack: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = Field(
        1, description="trials trained together in one process as one stack of models (harness/pack.py), sharing "
                       "the trial's resources; auto: the size a probe on the trial's device measures fastest")

    @model_validator(mode="after")
    def _whole_gpus_for_ddp(self):
        if self.gpus_per_trial > 1 and not float(self.gpus_per_trial).is_integer():
            raise ValueError(f"gpus_per_trial = {self.gpus_per_trial}: above 1 it must be a whole number")
        if self.workers_per_trial > 1 and self.gpus_per_trial and self.gpus_per_trial != self.workers_per_trial:
            raise ValueError("a DDP trial needs gpus_per_trial = workers_per_trial (one GPU per worker) or 0")
        if self.workers_per_trial > 1 and self.pack != 1:
            raise ValueError("pack: packed trials run in one process; workers_per_trial must be 1")
        return self


class Rule(Strict):
    when: dict[str, Any] = Field(min_length=1, description="dotted key -> value; all must match")
    set: dict[str, Any] = Field(min_length=1, description="dotted key -> value applied where `when` matches")


class SweepSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: Optional[dict[str, Any]] = None
    base_file: Optional[str] = Field(None, description="trial YAML, relative to the sweep YAML")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="cartesian axes: dotted key -> values")
    zip: list[dict[str, list[Any]]] = Field(default_factory=list, description="groups of lists varied together")
    overrides: list[Rule] = Field(default_factory=list)
    seeds: Optional[list[int]] = Field(None, min_length=1, description="an axis over the trial seed")
    resources: Resources = Field(default_factory=Resources)
    depends_on: list[str] = Field(default_factory=list, description="sweep YAMLs whose checkpoints this one needs")

    @field_validator("grid")
    @classmethod
    def _non_empty_axes(cls, v: dict) -> dict:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"grid axis {k!r} has no values")
        return v

    @field_validator("zip")
    @classmethod
    def _equal_lengths(cls, v: list) -> list:
        for group in v:
            lengths = {k: len(vals) for k, vals in group.items()}
            if len(set(lengths.values())) > 1 or 0 in lengths.values():
                raise ValueError(f"zipped lists must be non-empty and of equal length, got lengths {lengths}")
        return v

    @model_validator(mode="after")
    def _one_base(self):
        if (self.base is None) == (self.base_file is None):
            raise ValueError("a sweep needs exactly one of base (a trial config) or base_file (a path)")
        return self


@dataclass(frozen=True)
class Point:
    index: int
    values: dict[str, Any]  # swept key -> value, as the trial sees it (after overrides)
    cfg: TrialConfig

    @property
    def trial_id(self) -> str:
        return self.cfg.trial_id()


@dataclass
class Sweep:
    spec: SweepSpec
    source: Path
    base: dict
    points: list[Point]

    @property
    def name(self) -> str:
        return self.spec.name

    def resolved(self) -> dict:
        """The sweep as run: its spec with the base inlined, and every point's id and values."""
        spec = self.spec.model_dump(mode="json", exclude={"base_file"})
        spec["base"] = self.base
        spec["points"] = [{"index": p.index, "trial_id": p.trial_id, "values": p.values} for p in self.points]
        return spec


def get_dotted(d: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def set_dotted(d: dict, key: str, value: Any, source: str) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: {key}: {part!r} is not a section of the trial config")
    d[leaf] = copy.deepcopy(value)


def expand(spec: SweepSpec, base: dict, source: str) -> list[Point]:
    """Cartesian product of grid axes, zip groups and seeds; overrides applied; each point validated."""
    axes = [[{k: v} for v in vals] for k, vals in spec.grid.items()]
    axes += [[dict(zip(group, row)) for row in zip(*group.values())] for group in spec.zip]
    if spec.seeds is not None:
        axes.append([{"seed": s} for s in spec.seeds])
    swept = [k for axis in axes for k in axis[0]] + [k for r in spec.overrides for k in r.set]
    swept = list(dict.fromkeys(swept))
    resolved = []
    for combo in itertools.product(*axes):
        raw = copy.deepcopy(base)
        chosen = {k: v for part in combo for k, v in part.items()}
        for k, v in chosen.items():
            set_dotted(raw, k, v, source)
        for rule in spec.overrides:
            if all(get_dotted(raw, k) == v for k, v in rule.when.items()):
                for k, v in rule.set.items():
                    set_dotted(raw, k, v, source)
        resolved.append((chosen, raw, {k: get_dotted(raw, k) for k in swept}))
    columns = tag_columns([{k: v for k, v in values.items() if k != "seed"} for _, _, values in resolved])
    points, seen = [], {}
    for i, ((chosen, raw, values), tags) in enumerate(zip(resolved, columns)):
        raw["name"] = f"{spec.name}-{i:03d}"
        raw["tags"] = {**raw.get("tags", {}), **tags}
        label = ", ".join(f"{k}={v}" for k, v in chosen.items())
        cfg = parse_trial(raw, f"{source}: grid point {i} ({label})")
        if cfg.trial_id() in seen:
            raise ConfigError(f"{source}: grid points {seen[cfg.trial_id()]} and {i} are the same trial ({label})")
        seen[cfg.trial_id()] = i
        points.append(Point(i, values, cfg))
    return points


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with name, base and grid, got {type(raw).__name__}")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(err, str(path))) from None
    base = spec.base if spec.base is not None else read_yaml(path.parent / spec.base_file)
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base must be a mapping of trial config keys")
    sweep = Sweep(spec, path, base, expand(spec, base, str(path)))
    if spec.resources.pack != 1:
        from harness.pack import packs

        try:
            packs([p.cfg for p in sweep.points], 2)
        except ConfigError as err:
            raise ConfigError(f"{path}: resources.pack = {spec.resources.pack}: {err}") from None
    return sweep


def in_order(path: str | Path, _stack: tuple = ()) -> list[Sweep]:
    """The sweep and every sweep it depends on, dependencies first (each once)."""
    path = Path(path).resolve()
    if path in _stack:
        raise ConfigError(f"{path}: depends_on forms a cycle ({' -> '.join(p.name for p in _stack + (path,))})")
    sweep = load_sweep(path)
    out: list[Sweep] = []
    for dep in sweep.spec.depends_on:
        for s in in_order(path.parent / dep, _stack + (path,)):
            if s.source not in [o.source for o in out]:
                out.append(s)
    return out + [sweep]


def state_of(out: Path, p: Point) -> str:
    from harness.record import read_status, trial_dir  # torch loads only when something runs

    return read_status(trial_dir(out, p.cfg)).get("state", "pending")


def table(sweep: Sweep, out: Optional[Path] = None) -> str:
    """Plain-text trial table: index, trial id, swept values (and state when `out` exists)."""
    keys = list(sweep.points[0].values) if sweep.points else []
    head = ["#", "trial_id", *keys] + (["state"] if out else [])
    rows = [[str(p.index), p.trial_id, *(str(p.values[k]) for k in keys)] + ([state_of(out, p)] if out else [])
            for p in sweep.points]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows])


def write_resolved(sweep: Sweep, out: Path) -> None:
    write_text(out / "sweep.yaml", yaml.safe_dump(sweep.resolved(), sort_keys=False))


def log_to_stderr(level: int = logging.INFO) -> None:
    """Progress lines as the CLI prints them, for trial processes that Ray, torchrun or SLURM start."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")


def parent_death_signal():
    """A Popen preexec_fn (Linux): SIGTERM the child when its parent dies, so no DDP rank outlives a killed trial."""
    if sys.platform != "linux":
        return None
    import ctypes
    import signal

    prctl = ctypes.CDLL(None).prctl  # looked up before the fork: the child only makes the call
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def run_point(cfg: TrialConfig, out: Path, workers: int = 1) -> str:
    """One trial, resuming where it stopped: in this process, or as `workers` DDP ranks via torchrun.

    An exception marks the trial `failed` (with the reason) before it propagates.
    """
    from harness.record import read_status, trial_dir
    from harness.train import run_trial

    try:
        if workers == 1:
            return run_trial(cfg, out, resume=True, sweep=out.name)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
            fh.write(dump(cfg))
            fh.flush()
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}"]
            subprocess.run(torchrun + ["-m", "harness.sweep", fh.name, str(out)], check=True,
                           preexec_fn=parent_death_signal())
        return read_status(trial_dir(out, cfg))["state"]
    except Exception as err:
        mark_failed(out, [cfg], err)
        raise


def mark_failed(out: Path, cfgs: list[TrialConfig], err: Exception) -> None:
    """Record `err` as the reason in the status of every trial in `cfgs` that had not ended."""
    from harness.record import finished_state, trial_dir

    for cfg in cfgs:
        if not finished_state(out, cfg):
            write_json(trial_dir(out, cfg) / "status.json",
                       {"state": "failed", "reason": f"{type(err).__name__}: {err}"})


def run_job(cfgs: list[TrialConfig], out: Path, workers: int = 1) -> list[str]:
    """One Tune trial's work: a single point (run_point) or a pack of points trained as one stack."""
    if len(cfgs) == 1:
        return [run_point(cfgs[0], out, workers)]
    from harness.pack import run_pack

    try:
        return run_pack(cfgs, out, resume=True, sweep=out.name)
    except Exception as err:
        mark_failed(out, cfgs, err)
        raise


def tune_trial(config: dict, jobs: dict, out: str, workers: int, cwd: str) -> None:
    """The Tune trainable: run job `config['job']` (its points' configs) from the driver's folder; report states."""
    from ray import tune

    os.chdir(cwd)  # Tune starts trials in their own folder; relative data paths mean the driver's
    log_to_stderr()
    states = run_job(jobs[config["job"]], Path(out), workers)
    tune.report({"states": ",".join(states)})


def progress_callback(sweep: Sweep, out: Path, jobs: dict[int, list[Point]], total: int, already: int):
    """A Tune callback logging one line per finished trial: counts and ETA."""
    from ray import tune

    from harness.train import fmt_eta

    class Progress(tune.Callback):
        def __init__(self):
            self.t0, self.finished, self.states = time.time(), 0, {}

        def _log(self, trial, failed: bool) -> None:
            for p in jobs[trial.config["job"]]:
                state = state_of(out, p)
                state = "failed" if failed and state not in FINISHED else state
                self.finished += 1
                self.states[state] = self.states.get(state, 0) + 1
                elapsed = time.time() - self.t0
                left = total - already - self.finished
                counts = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items()))
                log.info("sweep %s: trial %s (point %d) %s | %d/%d finished (%s) | %s elapsed, ETA %s", sweep.name,
                         p.trial_id, p.index, state, already + self.finished, total, counts, fmt_eta(elapsed),
                         fmt_eta(elapsed / self.finished * left))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._log(trial, failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._log(trial, failed=True)

    return Progress()


def pack_size(sweep: Sweep, todo: list[Point]) -> int:
    """resources.pack, or for `auto` the probe's choice, measured in a Ray task holding one trial's resources."""
    r = sweep.spec.resources
    if r.pack != "auto":
        return r.pack
    import ray

    from harness.pack import probe

    task = ray.remote(num_cpus=r.cpus_per_trial, num_gpus=min(1.0, r.gpus_per_trial))(probe)
    size, rows = ray.get(task.remote(todo[0].cfg))
    log.info("sweep %s: pack probe %s -> pack %d", sweep.name,
             ", ".join(f"{row['pack']}: {row['images_per_s']:.0f} img/s" for row in rows), size)
    return size


def run_sweep(sweep: Sweep, out_root: Path, address: Optional[str] = None, num_cpus: Optional[int] = None,
              num_gpus: Optional[int] = None) -> dict[str, int]:
    """Run every unfinished point of `sweep` as a Ray Tune trial; returns the count of trials per state."""
    import ray
    from ray import tune

    out = Path(out_root).resolve() / sweep.name
    write_resolved(sweep, out)
    todo = [p for p in sweep.points if state_of(out, p) not in FINISHED]
    log.info("sweep %s: %d trials, %d already finished, %d to run -> %s", sweep.name, len(sweep.points),
             len(sweep.points) - len(todo), len(todo), out)
    if todo:
        if not ray.is_initialized():
            # "local": always a new cluster, never a stale one that `ray start` left in /tmp/ray/ray_current_cluster
            ray.init(address=address or "local", num_cpus=None if address else num_cpus,
                     num_gpus=None if address else num_gpus,
                     include_dashboard=False, log_to_driver=True, configure_logging=False)
        r = sweep.spec.resources
        size = pack_size(sweep, todo)
        if size == 1:
            jobs = {j: [p] for j, p in enumerate(todo)}
        else:
            from harness.pack import packs

            jobs = {j: [todo[i] for i in idx] for j, idx in enumerate(packs([p.cfg for p in todo], size))}
        trainable = tune.with_resources(
            partial(tune_trial, jobs={j: [p.cfg for p in ps] for j, ps in jobs.items()}, out=str(out),
                    workers=r.workers_per_trial, cwd=os.getcwd()),
            {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})
        tuner = tune.Tuner(
            trainable, param_space={"job": tune.grid_search(list(jobs))},
            run_config=tune.RunConfig(
                name=time.strftime("%Y%m%d-%H%M%S"), storage_path=str(out / ".tune"), verbose=0,
                callbacks=[progress_callback(sweep, out, jobs, len(sweep.points), len(sweep.points) - len(todo))]))
        tuner.fit()
    counts: dict[str, int] = {}
    for p in sweep.points:
        s = state_of(out, p)
        counts[s] = counts.get(s, 0) + 1
    log.info("sweep %s finished: %s", sweep.name, counts)
    return counts


def cmd_sweep(args) -> int:
    if args.target == "plan":
        sweeps = in_order(need_yaml(args))
        for s in sweeps:
            r = s.spec.resources
            print(f"sweep {s.name} ({s.source}): {len(s.points)} trials, {r.cpus_per_trial:g} CPU, "
                  f"{r.gpus_per_trial:g} GPU, {r.workers_per_trial} worker(s) per trial")
            out = Path(args.out) / s.name if args.out else None
            print(table(s, out if out and out.exists() else None))
        return 0
    if args.target == "trial":
        sweep = load_sweep(need_yaml(args))
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
    for s in in_order(args.target):
        counts = run_sweep(s, Path(args.out), args.address, args.num_cpus, args.num_gpus)
        failed += counts.get("failed", 0) + counts.get("running", 0) + counts.get("pending", 0)
    return 1 if failed else 0


def need_yaml(args) -> str:
    if not args.config:
        raise ConfigError(f"heurbench sweep {args.target}: missing the sweep YAML")
    return args.config


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep YAML with Ray Tune; `sweep plan x.yaml` prints its trials",
                       description="heurbench sweep x.yaml | sweep plan x.yaml | sweep trial x.yaml --index I")
    p.add_argument("target", help="a sweep YAML to run, or 'plan' / 'trial' followed by one")
    p.add_argument("config", nargs="?", help="the sweep YAML after 'plan' or 'trial'")
    p.add_argument("--out", default="runs", help="results root; the sweep writes to OUT/<name> (default runs)")
    p.add_argument("--address", help="an existing Ray cluster ('auto' or host:port); default: a local one")
    p.add_argument("--num-cpus", type=int, default=int(os.environ.get("SLURM_CPUS_ON_NODE", 0)) or None,
                   help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray cluster (default: all visible)")
    p.add_argument("--index", type=int, default=0, help="'trial': the grid point to run in this process")
    p.set_defaults(func=cmd_sweep)


if __name__ == "__main__":  # one DDP rank of a trial, as launched by run_point: python -m harness.sweep CFG OUT
    from harness.train import run_trial

    log_to_stderr(logging.WARNING)
    run_trial(load_trial(sys.argv[1]), Path(sys.argv[2]), resume=True)
