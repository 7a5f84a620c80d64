"""Sweeps: a base trial config plus a grid, expanded to validated trial configs (no Ray, no torch at import).

    name: s3_warmup
    base_file: ../trials/vgg11.yaml          # or base: {a trial config mapping}
    grid: {data.batch_size: [100, 5000], warmup.length: [0, 200]}     # cartesian axes, dotted keys
    zip: [{freeze.groups: [[], [fc_stack]], freeze.length: [0, 200]}]  # lists varied together
    overrides: [{when: {data.batch_size: 5000}, set: {optim.lr: 2.5}}]  # batch 5000 implies lr 2.5
    seeds: [0, 1, 2]                         # one more axis (varies fastest)
    resources: {gpus_per_trial: 0.25, cpus_per_trial: 2, workers_per_trial: 1}
    depends_on: [teacher.yaml]               # sweeps run (or submitted) before this one

Every swept key becomes a metrics column (`tags`). harness/tune_driver.py runs a sweep with
Ray Tune, slurm/launch.py submits it to SLURM; both run each point with harness/runner.py.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from harness.config import Strict, TrialConfig, format_error, parse_trial, plain_name, read_yaml
from harness.errors import ConfigError
from harness.layout import RunDir
from harness.metrics import tag_columns
from harness.storage import write_text

FINISHED = ("done", "diverged")
log = logging.getLogger("heurbench.sweep")


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
    name: str = Field(description="the sweep's folder under the results root: a plain name")
    base: Optional[dict[str, Any]] = None
    base_file: Optional[str] = Field(None, description="trial YAML, relative to the sweep YAML")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="cartesian axes: dotted key -> values")
    zip: list[dict[str, list[Any]]] = Field(default_factory=list, description="groups of lists varied together")
    overrides: list[Rule] = Field(default_factory=list)
    seeds: Optional[list[int]] = Field(None, min_length=1, description="an axis over the trial seed")
    resources: Resources = Field(default_factory=Resources)
    depends_on: list[str] = Field(default_factory=list, description="sweep YAMLs whose checkpoints this one needs")

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)

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


def schema_key(key: str) -> tuple[bool, list[str]]:
    """Whether dotted `key` names a field of the trial config (any key under `tags`), and else the field names
    of the deepest section it reached (for "did you mean")."""
    model: typing.Any = TrialConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not (isinstance(model, type) and issubclass(model, Strict)):
            return typing.get_origin(model) is dict and i == len(parts) - 1, []
        if part not in model.model_fields:
            return False, list(model.model_fields)
        model = model.model_fields[part].annotation
        args = [a for a in typing.get_args(model) if a is not type(None)]
        if typing.get_origin(model) in (typing.Union, types.UnionType) and len(args) == 1:
            model = args[0]  # Optional[Section]
    return True, []


def check_rules(spec: SweepSpec, source: str) -> None:
    """An override whose `when` names a key the trial config does not have could never fire: an error."""
    for n, rule in enumerate(spec.overrides):
        for key in rule.when:
            ok, fields = schema_key(key)
            if not ok:
                close = difflib.get_close_matches(key.split(".")[-1], fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: overrides.{n}.when: unknown key {key!r}{hint}; this rule would never "
                                  f"fire")


def expand(spec: SweepSpec, base: dict, source: str) -> list[Point]:
    """Cartesian product of grid axes, zip groups and seeds; overrides applied; each point validated."""
    axes = [[{k: v} for v in vals] for k, vals in spec.grid.items()]
    axes += [[dict(zip(group, row)) for row in zip(*group.values())] for group in spec.zip]
    if spec.seeds is not None:
        axes.append([{"seed": s} for s in spec.seeds])
    swept = [k for axis in axes for k in axis[0]] + [k for r in spec.overrides for k in r.set]
    swept = list(dict.fromkeys(swept))
    check_rules(spec, source)
    resolved, fired = [], set()
    for combo in itertools.product(*axes):
        raw = copy.deepcopy(base)
        chosen = {k: v for part in combo for k, v in part.items()}
        for k, v in chosen.items():
            set_dotted(raw, k, v, source)
        for n, rule in enumerate(spec.overrides):
            if all(get_dotted(raw, k) == v for k, v in rule.when.items()):
                fired.add(n)
                for k, v in rule.set.items():
                    set_dotted(raw, k, v, source)
        resolved.append((chosen, raw, {k: get_dotted(raw, k) for k in swept}))
    for n, rule in enumerate(spec.overrides):
        if n not in fired:
            log.warning("%s: overrides.%d (when %s) matches no grid point", source, n, rule.when)
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
    """The point's trial state under the sweep folder `out`: pending, running, done, diverged or failed."""
    return RunDir(out).trial(p.trial_id).read_status().get("state", "pending")


def table(sweep: Sweep, out: Optional[Path] = None) -> str:
    """Plain-text trial table: index, trial id, swept values (and state when `out` exists)."""
    keys = list(sweep.points[0].values) if sweep.points else []
    head = ["#", "trial_id", *keys] + (["state"] if out else [])
    rows = [[str(p.index), p.trial_id, *(str(p.values[k]) for k in keys)] + ([state_of(out, p)] if out else [])
            for p in sweep.points]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [head, *rows])


def write_resolved(sweep: Sweep, out: Path) -> None:
    """The resolved sweep beside its results (the report reads it)."""
    write_text(RunDir(out).sweep_yaml, yaml.safe_dump(sweep.resolved(), sort_keys=False))
