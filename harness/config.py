"""One schema for a trial: YAML in, validated before anything runs.

Every section is a strict pydantic model (unknown keys are errors), so a typo in a YAML
never silently falls back to a default. `load_trial` turns any validation problem into
one `ConfigError` line naming the file, the key, the bad value and what was expected
(with "did you mean" for a misspelled key, at every level).

Errors, because they can never be intended: a duplicate YAML key, an infinite or NaN number,
a trial/sweep name that is not a plain file name (it would leave the results folder),
checkpoints or schedule milestones beyond the budget (checked here when their unit is the
budget's unit, else by `harness.trial.check_budget` once the steps per epoch are known),
an override `when` on a key the trial config does not have (harness/grid.py), labels out
of range (harness/data.py). Warnings (logged, the run goes on), because a short smoke run of
a long config means them: warmup or freeze longer than the budget, an override that matches
no grid point.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from harness.errors import ConfigError
from harness.yamlfile import read_yaml
from harness.registry import import_plugins, register  # names known without torch (harness/registry.py)

Unit = Literal["epoch", "iteration"]
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def plain_name(v: str) -> str:
    """`v` if it is a plain file name (letters, digits, '_.-', not '.' or '..'), which cannot leave its folder."""
    if not PLAIN_NAME.fullmatch(v) or v in (".", ".."):
        raise ValueError("must be a plain name (letters, digits, '_.-'; not '.' or '..'; no path separators), "
                         "since it names a folder inside the results folder")
    return v
Scalar = Union[bool, int, float, str, None]




class Strict(BaseModel):
    """Every config section: unknown keys, NaN and infinities are errors. A plug-in's options subclass it."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, v: Any, info) -> Any:
        """`batch_size: true` is an error, not batch size 1 (pydantic reads a boolean as the number 0 or 1)."""
        field = cls.model_fields.get(info.field_name)
        values = v if isinstance(v, list) else [v]
        if field is not None and wants_number(field.annotation) and any(isinstance(x, bool) for x in values):
            raise ValueError("expected a number, got a boolean (true/false)")
        return v


def wants_number(annotation: Any) -> bool:
    """An int or float field (alone, Optional or a list of them) that takes no boolean."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return bool(args) and bool not in args and any(wants_number(a) for a in args)


def known(kind: str):
    """A field validator: the value must name a registered `kind` component (harness.registry)."""
    return field_validator("name")(classmethod(lambda cls, v: register.known(kind, v)))


class ModelCfg(Strict):
    name: str
    bn: Union[bool, Literal["sync"]] = Field(False, description="VGG: BN after each conv; 'sync': BN layers (VGG's "
                                             "or a ResNet's) normalise over the whole DDP batch (SyncBatchNorm)")
    init: Literal["default", "he_normal", "keskar"] = Field("he_normal", description="keskar: the closer-look "
                                                            "authors' VGG init (harness.models.keskar_)")
    init_scale: float = Field(1.0, gt=0, description="multiplier on the init variance (S1 mode E uses 3)")
    dropout: float = Field(0.0, ge=0, lt=1)
    width: float = Field(1.0, gt=0, description="width multiplier of VGG, ResNet and the student CNN (reduced-scale studies)")
    fc_width: Optional[int] = Field(None, gt=0, description="VGG's hidden FC width (default 512 x width; the "
                                    "closer-look authors' VGG has 4096)")
    init_from: Optional[str] = Field(None, description="checkpoint (path or @sweep:point:file) whose weights start the run")

    _known = known("model")


class DataCfg(Strict):
    name: str
    root: Optional[str] = None
    train_subset: Optional[int] = Field(None, gt=0)
    test_subset: Optional[int] = Field(None, gt=0)
    val_size: int = Field(0, ge=0, description="images held out from the end of train as 'val'")
    augment: bool = True
    batch_size: int = Field(100, gt=0, description="global batch, split across DDP ranks")
    eval_batch_size: int = Field(1000, gt=0)

    _known = known("dataset")

    @model_validator(mode="after")
    def _root_needed(self):
        if self.name in ("cifar10", "cifar100", "parquet") and not self.root:
            raise ValueError(f"data.root is required for data.name={self.name!r} (a folder path)")
        return self


class OptimCfg(Strict):
    name: str
    lr: float = Field(gt=0, description="base LR; for sphere_sgd the effective LR on the unit sphere")
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)

    _known = known("optimizer")


class ScheduleCfg(Strict):
    name: str = "constant"
    unit: Unit = Field("epoch", description="unit of milestones and t0")
    milestones: list[int] = Field(default_factory=list)
    factor: float = Field(0.1, gt=0, description="step: LR multiplier at each milestone")
    t0: int = Field(10, gt=0, description="sgdr: first cycle length")
    t_mult: int = Field(2, ge=1, description="sgdr: cycle length multiplier")
    eta_min: float = Field(0.0, ge=0, description="floor of linear, cosine and sgdr")
    eta_max: Optional[float] = Field(None, gt=0, description="sgdr peak; defaults to optim.lr")

    _known = known("schedule")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(m <= 0 for m in v) or v != sorted(set(v)):
            raise ValueError(f"expected strictly increasing positive milestones, got {v}")
        return v


class WarmupCfg(Strict):
    length: int = Field(0, ge=0, description="0 = no warmup")
    unit: Unit = "iteration"
    eta_init: Union[Literal["catapult"], float] = Field(
        0.0, description="LR at iteration 0, rising linearly to the schedule; `catapult`: the smallest LR whose first "
                         "step raises the loss (harness/catapult.py)")

    @field_validator("eta_init")
    @classmethod
    def _non_negative(cls, v):
        if v != "catapult" and v < 0:
            raise ValueError("must be >= 0 or 'catapult'")
        return v


class FreezeCfg(Strict):
    groups: list[str] = Field(default_factory=list, description="layer groups of the model, e.g. fc_stack")
    length: int = Field(0, ge=0, description="frozen for iterations/epochs [0, length)")
    unit: Unit = "iteration"


class DistillCfg(Strict):
    teacher: str = Field(description="path to the teacher's checkpoint (.pt written by heurbench)")
    temperature: float = Field(4.0, gt=0)
    weight: float = Field(1.0, ge=0, le=1, description="weight of the soft loss; 1 - weight goes to hard labels")


class BudgetCfg(Strict):
    epochs: Optional[int] = Field(None, gt=0)
    iterations: Optional[int] = Field(None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("budget needs exactly one of epochs or iterations")
        return self


class EvalCfg(Strict):
    every: int = Field(1, gt=0)
    unit: Unit = "epoch"
    train_stride: int = Field(10, gt=0, description="write a per-iteration train row every N iterations")
    log_every: int = Field(50, gt=0, description="progress line every N iterations")


class CheckpointCfg(Strict):
    epochs: list[int] = Field(default_factory=list)
    iterations: list[int] = Field(default_factory=lambda: [0])
    final: bool = True

    @field_validator("epochs", "iterations")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(x < 0 for x in v):
            raise ValueError(f"expected non-negative steps, got {v}")
        return sorted(set(v))


class PerfCfg(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(False, description="bf16 autocast on CUDA")
    channels_last: bool = False
    compile: Literal[False, "default", "reduce-overhead", "max-autotune"] = Field(
        False, description="torch.compile mode; reduce-overhead uses CUDA graphs (static shapes)")


# the sections that name a component, and its kind: a plug-in component adds its own fields to its section
COMPONENT_SECTIONS = {"model": "model", "data": "dataset", "optim": "optimizer", "schedule": "schedule"}
SECTION_CLASS = {"model": ModelCfg, "data": DataCfg, "optim": OptimCfg, "schedule": ScheduleCfg}
BUILTIN_HEURISTIC_SECTIONS = ("warmup", "freeze", "distill")  # a built-in heuristic's options: its own section


@functools.lru_cache(maxsize=None)
def with_options(base: type[Strict], options: Optional[type[BaseModel]]) -> type[Strict]:
    """The section schema of a plug-in component: the section's common fields plus the plug-in's own."""
    if options is None:
        return base
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise ConfigError(f"{options!r}: a component's options must be a pydantic model (subclass heurbench.Options)")
    clash = sorted(set(base.model_fields) & set(options.model_fields) - {"name"})
    if clash:
        raise ConfigError(f"{options.__module__}.{options.__name__}: fields {clash} clash with the section's own "
                          f"({base.__name__})")
    return type(f"{options.__name__}_{base.__name__}", (base, options), {"__module__": options.__module__})


def section_schema(section: str, raw: Any) -> type[Strict]:
    """The schema a component section validates with: its class, extended by a plug-in component's options (the
    class alone for built-ins, for unknown names, which its name check reports, and for other values)."""
    base = SECTION_CLASS[section]
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return base
    try:
        return with_options(base, register.options(COMPONENT_SECTIONS[section], raw["name"]))
    except ValueError:
        return base


def describe(err: ValidationError, prefix: tuple = ()) -> str:
    """`format_error` without the source: the first error, its location under `prefix`."""
    return format_error(err, "", prefix).removeprefix(": ")


HASHED_WHEN_SET = [("model", "fc_width")]  # fields added after results existed: at their default (None) a trial
# hashes as before they did, so its results keep their trial id


class TrialConfig(Strict):
    name: str = "trial"
    seed: int = Field(0, ge=0)
    plugins: list[str] = Field(default_factory=list, description="modules to import first (plug-ins: next to the "
                                                                 "YAML or on PYTHONPATH)")
    model: SerializeAsAny[ModelCfg]
    data: SerializeAsAny[DataCfg]
    optim: SerializeAsAny[OptimCfg]
    schedule: SerializeAsAny[ScheduleCfg] = Field(default_factory=ScheduleCfg)
    warmup: WarmupCfg = Field(default_factory=WarmupCfg)
    freeze: FreezeCfg = Field(default_factory=FreezeCfg)
    distill: Optional[DistillCfg] = None
    heuristics: dict[str, SerializeAsAny[Strict]] = Field(
        default_factory=dict, description="plug-in heuristics: registered name -> its options")
    budget: BudgetCfg
    eval: EvalCfg = Field(default_factory=EvalCfg)
    checkpoints: CheckpointCfg = Field(default_factory=CheckpointCfg)
    perf: PerfCfg = Field(default_factory=PerfCfg)
    tags: dict[str, Scalar] = Field(default_factory=dict, description="swept values, one metrics column each")

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)

    @model_validator(mode="before")
    @classmethod
    def _plugin_sections(cls, raw: Any) -> Any:
        """Import the config's plug-in modules, then validate each plug-in component's section with its options
        and each plug-in heuristic's options (their errors name the key under the section)."""
        if not isinstance(raw, dict):
            return raw
        plugins = raw.get("plugins") or []
        if isinstance(plugins, list) and all(isinstance(m, str) for m in plugins):
            import_plugins(plugins)
        out = dict(raw)
        for section in COMPONENT_SECTIONS:
            schema = section_schema(section, raw.get(section))
            if schema is not SECTION_CLASS[section]:
                try:
                    out[section] = schema.model_validate(raw[section])
                except ValidationError as err:
                    raise ValueError(describe(err, (section,))) from None
        hs = raw.get("heuristics")
        if isinstance(hs, dict):
            out["heuristics"] = {name: heuristic_options(name, value) for name, value in hs.items()}
        return out

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.optim.name == "sphere_sgd" and self.optim.weight_decay:
            raise ValueError("optim.weight_decay must be 0 for sphere_sgd (the sphere fixes the norm)")
        for unit, budget in (("iteration", self.budget.iterations), ("epoch", self.budget.epochs)):
            if budget is not None:
                beyond_budget(self, unit, budget)
        return self

    def trial_id(self) -> str:
        """Stable id: hash of the resolved config (name and plugins excluded, so that renaming keeps results and a
        module that moved into a package keeps them too; no plug-in heuristics, and HASHED_WHEN_SET fields at their
        default, hash as before they existed)."""
        d = self.model_dump(mode="json", exclude={"name", "plugins"})
        if not d["heuristics"]:
            del d["heuristics"]
        for section, key in HASHED_WHEN_SET:
            if d[section].get(key) is None:
                d[section].pop(key, None)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def __reduce__(self):
        """Pickled as its mapping and validated again when unpickled (a Ray worker, a SLURM job): a plug-in
        section's schema is made at validation time, and the unpickling process imports the plug-ins itself."""
        return parse_trial, (self.model_dump(mode="json"), f"trial {self.name!r}")


def heuristic_options(name: Any, value: Any) -> BaseModel:
    """heuristics.<name>: the registered plug-in heuristic's options, validated (a ValueError naming the key)."""
    if name in BUILTIN_HEURISTIC_SECTIONS:
        raise ValueError(f"heuristics.{name}: a built-in heuristic; set its own top-level section `{name}:`")
    register.known("heuristic", name)
    options = register.options("heuristic", name) or Strict
    try:
        return options.model_validate({} if value is None else value)
    except ValidationError as err:
        raise ValueError(describe(err, ("heuristics", name))) from None


def beyond_budget(cfg: "TrialConfig", unit: str, budget: int) -> None:
    """Raise for checkpoints or schedule milestones in `unit` (iteration or epoch) past a budget of `budget` of
    them: they would never happen. (Called at config time when `unit` is the budget's unit, and by
    harness.trial.check_budget once the steps per epoch convert the other unit.)"""
    where = f"the budget of {budget} {unit}s"
    listed = cfg.checkpoints.iterations if unit == "iteration" else cfg.checkpoints.epochs
    late = [x for x in listed if x > budget]
    if late:
        raise ValueError(f"checkpoints.{unit}s = {listed}: {late} beyond {where} (never taken)")
    if cfg.schedule.unit == unit and cfg.schedule.name == "step":
        late = [m for m in cfg.schedule.milestones if m >= budget]
        if late:
            raise ValueError(f"schedule.milestones = {cfg.schedule.milestones}: {late} at or beyond {where} "
                             f"(the LR never changes there)")


def _section(model: Any, loc: tuple) -> Any:
    """The pydantic model class at `loc` (a pydantic error location) under `model`, or None."""
    import typing

    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = model.model_fields[part].annotation
        for _ in range(3):  # unwrap Optional[...] and list[...]
            args = [a for a in typing.get_args(model) if a is not type(None)]
            if isinstance(model, type) and issubclass(model, BaseModel) or not args:
                break
            model = args[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _strict_models(cls: type = None) -> list[type]:
    cls = cls or Strict
    return [cls] + [m for sub in cls.__subclasses__() for m in _strict_models(sub)]


def format_error(err: ValidationError, source: str, prefix: tuple = ()) -> str:
    """First pydantic error as one line: file, dotted key, bad value, expectation. An unknown key is reported
    before a missing one (a misspelled key is both), with the section's closest field names. `prefix`: where in
    the file the validated mapping sits."""
    errors = err.errors()
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    key = ".".join(str(p) for p in (*prefix, *e["loc"])) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        root = next((m for m in _strict_models() if m.__name__ == err.title), None)
        section = _section(root, e["loc"][:-1])
        close = difflib.get_close_matches(str(e["loc"][-1]), list(section.model_fields), n=1) if section else []
        return f"{source}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if e["type"] == "missing":
        return f"{source}: missing required key {key!r}"
    if not e["loc"] and not prefix:  # a check across sections (or a plug-in's section): its message names the keys
        return f"{source}: {msg}"
    return f"{source}: {key} = {e.get('input')!r}: {msg}"


def parse_trial(raw: Any, source: str = "<config>") -> TrialConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(raw).__name__}")
    try:
        return TrialConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(err, source)) from None


def load_trial(path: str | Path) -> TrialConfig:
    """The trial YAML at `path`; the modules its `plugins:` lists are found next to it first."""
    raw = read_yaml(path)
    if isinstance(raw, dict) and isinstance(raw.get("plugins"), list):
        import_plugins([m for m in raw["plugins"] if isinstance(m, str)], near=Path(path).parent)
    return parse_trial(raw, str(path))


def dump(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
