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

import difflib
import functools
import itertools
import logging
import math
import operator
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, Optional, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from harness.config import Strict, TrialConfig, format_error, parse_trial, plain_name
from harness import confine
from harness.errors import ConfigError
from harness.layout import RunDir
from harness.metrics import tag_columns
from harness.storage import write_text
from harness.yamlfile import read_yaml
from harness.registry import import_plugins, register

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
    plugins: list[str] = Field(default_factory=list, description="plug-in modules (next to the YAML or on "
                               "PYTHONPATH), imported before the points are validated and by every trial")
    study: Optional[str] = Field(None, description="the study `heurbench report` runs (default: the name's prefix)")

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)

    @field_validator("study")
    @classmethod
    def _known_study(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else register.known("study", v)

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
    chosen: dict[str, Any]  # the point's axis values (before overrides)

    @property
    def trial_id(self) -> str:
        return self.cfg.trial_id()


@dataclass
class Sweep:
    """A sweep's spec and base; its points are expanded (every one validated) when first asked for, or streamed
    one at a time by `stream` (a grid too large to hold)."""
    spec: SweepSpec
    source: Path
    base: dict

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def axes(self) -> list[list[dict]]:
        """The varied parts of a point, one list per axis (grid keys, zip groups, seeds; the last varies fastest)."""
        axes = [[{k: v} for v in vals] for k, vals in self.spec.grid.items()]
        axes += [[dict(zip(group, row)) for row in zip(*group.values())] for group in self.spec.zip]
        if self.spec.seeds is not None:
            axes.append([{"seed": s} for s in self.spec.seeds])
        return axes

    def __len__(self) -> int:
        return math.prod(len(a) for a in self.axes)

    @functools.cached_property
    def points(self) -> list[Point]:
        return list(self.stream())

    def stream(self) -> Iterator[Point]:
        """Every point, validated, in order, without holding them: a first pass finds each swept key's metrics
        type (and overrides that never fire), the second builds and checks the configs."""
        source = str(self.source)
        check_rules(self.spec, source)
        kinds: dict[str, dict[str, Any]] = {}  # swept key -> one value of each kind seen (harness.metrics.tag_columns)
        fired: set[int] = set()
        for _, _, values in self._resolved(fired):
            for k, v in values.items():
                kind = "none" if v is None else "bool" if isinstance(v, bool) else \
                    "number" if isinstance(v, (int, float)) else "other"
                kinds.setdefault(k, {}).setdefault(kind, v)
        for n, rule in enumerate(self.spec.overrides):
            if n not in fired:
                log.warning("%s: overrides.%d (when %s) matches no grid point", source, n, rule.when)
        reps = [{k: list(seen.values())[min(i, len(seen) - 1)] for k, seen in kinds.items() if k != "seed"}
                for i in range(max(map(len, kinds.values()), default=0))]
        seen: set[int] = set()
        for p in self._points(reps):
            fingerprint = hash(p.cfg.model_dump_json(exclude={"name"}))
            if fingerprint in seen:  # the same trial as an earlier point (or, once in ~10^11 sweeps, a hash collision)
                first = next(q for q in self._points(reps) if q.trial_id == p.trial_id)
                if first.index < p.index:
                    label = ", ".join(f"{k}={v}" for k, v in p.chosen.items())
                    raise ConfigError(f"{source}: grid points {first.index} and {p.index} are the same trial "
                                      f"({label})")
            seen.add(fingerprint)
            yield p

    def _resolved(self, fired: set[int]) -> Iterator[tuple[dict, dict, dict]]:
        """(chosen axis values, trial config with overrides applied, swept values) of each point, in order; adds
        the index of every override that fires to `fired`."""
        source = str(self.source)
        swept = [k for axis in self.axes for k in axis[0]] + [k for r in self.spec.overrides for k in r.set]
        swept = list(dict.fromkeys(swept))
        for combo in itertools.product(*self.axes):
            raw = dict(self.base)
            chosen = {k: v for part in combo for k, v in part.items()}
            for k, v in chosen.items():
                set_dotted(raw, k, v, source)
            for n, rule in enumerate(self.spec.overrides):
                if all(value_at(raw, k) == v for k, v in rule.when.items()):
                    fired.add(n)
                    for k, v in rule.set.items():
                        set_dotted(raw, k, v, source)
            yield chosen, raw, {k: get_dotted(raw, k) for k in swept}

    def _points(self, reps: list[dict]) -> Iterator[Point]:
        """Each point's validated config: its swept values as tags, typed as `tag_columns` types them over the
        whole sweep (`reps`: rows holding one value of each kind every swept key takes)."""
        check = SectionCache()
        for i, (chosen, raw, values) in enumerate(self._resolved(set())):
            tags = tag_columns([*reps, {k: v for k, v in values.items() if k != "seed"}])[-1]
            raw["name"] = f"{self.spec.name}-{i:03d}"
            raw["tags"] = {**raw.get("tags", {}), **tags}
            label = ", ".join(f"{k}={v}" for k, v in chosen.items())
            yield Point(i, values, check(raw, f"{self.source}: grid point {i} ({label})"), chosen)

    def resolved(self) -> dict:
        """The sweep as run: its spec with the base inlined, and every point's id and values."""
        spec = self.spec.model_dump(mode="json", exclude={"base_file"})
        spec["base"] = self.base
        if self.spec.plugins:  # where `heurbench report` finds plain plug-in modules again
            spec["plugin_path"] = str(self.source.parent.resolve())
        spec["points"] = [{"index": p.index, "trial_id": p.trial_id, "values": p.values} for p in self.points]
        return spec


class SectionCache:
    """`parse_trial` for many configs that share most of their sections: each distinct section (model, data,
    optim, ...) is validated once (up to MEMO of them kept), then per config only the top level (name, seed,
    tags, the checks across sections). The same configs and errors as `parse_trial`; configs share section objects
    (read-only, as every config is)."""
    MEMO = 4096

    def __init__(self):
        self.memo: dict[tuple[str, str], Strict] = {}

    def __call__(self, raw: dict, source: str) -> TrialConfig:
        top = dict(raw)
        try:
            for name, model in SECTIONS.items():
                if isinstance(raw.get(name), dict):
                    top[name] = self.section(name, model, raw[name])
            return TrialConfig.model_validate(top)
        except ValidationError:
            return parse_trial(raw, source)  # the usual one-line error, naming the key within its section

    def section(self, name: str, model: type[Strict], raw: dict) -> Strict:
        key = (name, repr(raw))  # equal for equal YAML values (str, numbers, bools, None, dates, lists, mappings)
        if key not in self.memo:
            if len(self.memo) >= self.MEMO:
                self.memo.clear()
            self.memo[key] = model.model_validate(raw)
        return self.memo[key]


def section_model(annotation: Any) -> Any:
    """A field's type with Optional[...] unwrapped (Optional[DistillCfg] -> DistillCfg)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


SECTIONS = {name: section_model(f.annotation) for name, f in TrialConfig.model_fields.items()
            if isinstance(section_model(f.annotation), type) and issubclass(section_model(f.annotation), Strict)}


def flatten(d: dict, prefix: str = "", keep: Callable[[str], bool] = lambda key: False) -> dict:
    """A nested mapping as {dotted key: value}; an empty mapping, or one at a dotted key that `keep` names, stays
    a value."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not keep(key):
            out.update(flatten(v, key + ".", keep))
        else:
            out[key] = v
    return out


def get_dotted(d: dict, key: str) -> Any:
    """Dotted `key` of a mapping, None where it is absent. (A swept value and so a tag, part of the trial id: a key
    an override sets and the base leaves out stays None where the override does not fire.)"""
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def value_at(raw: dict, key: str) -> Any:
    """Dotted `key` of a trial config as the trial sees it: its value in `raw`, else the schema's default (None
    where there is neither, or the section is absent)."""
    node: Any = raw
    model: Any = TrialConfig
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        if part in node:
            node = node[part]
        elif isinstance(model, type) and issubclass(model, Strict) and part in model.model_fields \
                and not model.model_fields[part].is_required():
            node = model.model_fields[part].get_default(call_default_factory=True)
            node = node.model_dump(mode="json") if isinstance(node, Strict) else node
        else:
            return None
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, Strict) else None
        model = section_model(field.annotation) if field else None
    return node


def set_dotted(d: dict, key: str, value: Any, source: str) -> None:
    """Set dotted `key` in `d`, copying the sections on its path first (so `d` may share them with other configs)."""
    *parents, leaf = key.split(".")
    for part in parents:
        section = d.get(part, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: {key}: {part!r} is not a section of the trial config")
        d[part] = d = dict(section)
    d[leaf] = value


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
        model = section_model(model.model_fields[part].annotation)
    return True, []


def check_rules(spec: SweepSpec, source: str) -> None:
    """An override whose `when` names a key the trial config does not have could never fire: an error. (A key the
    base leaves out matches its schema default: `value_at`.)"""
    for n, rule in enumerate(spec.overrides):
        for key in rule.when:
            ok, fields = schema_key(key)
            if not ok:
                close = difflib.get_close_matches(key.split(".")[-1], fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: overrides.{n}.when: unknown key {key!r}{hint}; this rule would never "
                                  f"fire")


def read_sweep(path: str | Path, seeds: Optional[list[int]] = None) -> Sweep:
    """The sweep YAML at `path`, its spec and base checked; points not yet expanded. `seeds` (`--seeds`) replaces
    the YAML's `seeds:` axis: the finished trials of the seeds both name are the same trials, the rest are new."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with name, base and grid, got {type(raw).__name__}")
    if seeds is not None:
        log.info("%s: seeds %s (--seeds; the YAML says %s)", path, seeds, raw.get("seeds"))
        raw = {**raw, "seeds": seeds}
    if isinstance(raw.get("plugins"), list):  # before the spec: its `study:` may be a plug-in's
        import_plugins([m for m in raw["plugins"] if isinstance(m, str)], near=path.parent)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(err, str(path))) from None
    base = spec.base if spec.base is not None else read_yaml(path.parent / spec.base_file)
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base must be a mapping of trial config keys")
    if spec.plugins:  # every trial imports them too (a Ray worker, a DDP rank, a SLURM job)
        listed = base.get("plugins") if isinstance(base.get("plugins"), list) else []
        base = {**base, "plugins": list(dict.fromkeys([*spec.plugins, *listed]))}
    return Sweep(spec, path, base)


def load_sweep(path: str | Path, seeds: Optional[list[int]] = None) -> Sweep:
    """The sweep at `path` (seeds as `read_sweep`) with every point expanded and validated (and its packs, if it
    packs trials)."""
    sweep = read_sweep(path, seeds)
    points = sweep.points  # expanded and validated now, before anything runs
    if sweep.spec.resources.pack != 1:
        from harness.pack import packs

        try:
            packs([p.cfg for p in points], 2)
        except ConfigError as err:
            raise ConfigError(f"{path}: resources.pack = {sweep.spec.resources.pack}: {err}") from None
    return sweep


def in_order(path: str | Path, load: Callable[..., Sweep] = load_sweep, _stack: tuple = (),
             seeds: Optional[list[int]] = None) -> list[Sweep]:
    """The sweep and every sweep it depends on, dependencies first (each once), each read by `load` (load_sweep
    expands and validates every point; read_sweep leaves them to `Sweep.stream`); `seeds` applies to the sweep
    at `path` only, not to those it depends on."""
    path = Path(path).resolve()
    if path in _stack:
        raise ConfigError(f"{path}: depends_on forms a cycle ({' -> '.join(p.name for p in _stack + (path,))})")
    sweep = load(path, seeds)
    out: list[Sweep] = []
    for dep in sweep.spec.depends_on:
        for s in in_order(path.parent / dep, load, _stack + (path,)):
            if s.source not in [o.source for o in out]:
                out.append(s)
    return out + [sweep]


def seed_list(text: str) -> list[int]:
    """`--seeds`: '0-9', '0,3,5' or '0-3,8' as a list of distinct seeds in the order given."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            span = range(int(lo), int(hi) + 1) if dash else [int(lo)]
        except ValueError:
            span = []
        if not span:
            raise ConfigError(f"--seeds {text!r}: expected seeds as '0-9', '0,3,5' or '0-3,8' (non-negative "
                              f"integers, each range low-high)")
        seeds += [s for s in span if s not in seeds]
    return seeds


def state_of(out: Path, p: Point) -> str:
    """The point's trial state under the sweep folder `out`: pending, running, done, diverged or failed."""
    return RunDir(out).trial(p.trial_id).read_status().get("state", "pending")


SUMMARY_KEYS = ("model.name", "model.width", "data.name", "data.batch_size", "budget.epochs", "budget.iterations",
                "perf.device", "perf.bf16", "perf.compile")  # the settings a trial's time and memory depend on


def plan(sweep: Sweep, out: Optional[Path] = None, rows: Optional[int] = 10) -> Iterator[str]:
    """`sweep plan`'s lines, streamed while every point is validated: the sweep's size and resources, its first
    `rows` trials (None: all) as a table of index, trial id, swept values (and state when `out` is given), then the
    distinct values of SUMMARY_KEYS. Column widths fit the first 100 rows."""
    r = sweep.spec.resources
    yield (f"sweep {sweep.name} ({sweep.source}): {len(sweep)} trials, {r.cpus_per_trial:g} CPU, "
           f"{r.gpus_per_trial:g} GPU, {r.workers_per_trial} worker(s) per trial")
    distinct: dict[str, dict] = {k: {} for k in SUMMARY_KEYS}
    buffer: list[list[str]] = []
    widths: Optional[list[int]] = None
    for p in sweep.stream():
        for k, seen in distinct.items():
            seen[operator.attrgetter(k)(p.cfg)] = None
        if rows is not None and p.index >= rows:
            continue
        if not buffer:
            buffer.append(["#", "trial_id", *p.values] + (["state"] if out else []))
        row = [str(p.index), p.trial_id, *map(str, p.values.values())] + ([state_of(out, p)] if out else [])
        if widths is None:
            buffer.append(row)
            if len(buffer) > 100:
                widths = [max(map(len, col)) for col in zip(*buffer)]
                yield from (fmt_row(b, widths) for b in buffer)
        else:
            yield fmt_row(row, widths)
    if widths is None:
        widths = [max(map(len, col)) for col in zip(*buffer)]
        yield from (fmt_row(b, widths) for b in buffer)
    if rows is not None and len(sweep) > rows:
        yield f"... {len(sweep) - rows} more trials (--all lists every one)"
    shown = {k: [v for v in seen if v is not None] for k, seen in distinct.items()}
    yield "distinct: " + "; ".join(f"{k} = {', '.join(map(str, vals[:8]))}{' ...' if len(vals) > 8 else ''} "
                                   f"({len(vals)})" for k, vals in shown.items() if vals)


def fmt_row(row: list[str], widths: list[int]) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()


def write_resolved(sweep: Sweep, out: Path) -> None:
    """The resolved sweep beside its results (the report reads it), in a folder marked as this sweep's."""
    confine.claim(out, sweep.name)
    write_text(RunDir(out).sweep_yaml, yaml.safe_dump(sweep.resolved(), sort_keys=False))
