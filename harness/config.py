"""One schema for a trial: YAML in, validated before anything runs.

Every section is a strict pydantic model (unknown keys are errors), so a typo in a YAML
never silently falls back to a default. `load_trial` turns any validation problem into
one `ConfigError` line naming the file, the key, the bad value and what was expected.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import ConfigError

Unit = Literal["epoch", "iteration"]
Scalar = Union[bool, int, float, str, None]


def known(kind: str, registry: dict, name: str) -> str:
    """`name` if `registry` has it, else the one-line error listing the known names."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(registry)}")
    return name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelCfg(Strict):
    name: str
    bn: bool = False
    init: Literal["default", "he_normal"] = "he_normal"
    init_scale: float = Field(1.0, gt=0, description="multiplier on the init variance (S1 mode E uses 3)")
    dropout: float = Field(0.0, ge=0, lt=1)
    width: float = Field(1.0, gt=0, description="channel multiplier of VGG/ResNet (reduced-scale studies)")
    init_from: Optional[str] = Field(None, description="checkpoint (path or @sweep:point:file) whose weights start the run")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from harness.models import REGISTRY  # registries load torch: imported when a config is checked

        return known("model", REGISTRY, v)


class DataCfg(Strict):
    name: str
    root: Optional[str] = None
    train_subset: Optional[int] = Field(None, gt=0)
    test_subset: Optional[int] = Field(None, gt=0)
    val_size: int = Field(0, ge=0, description="images held out from the end of train as 'val'")
    augment: bool = True
    batch_size: int = Field(100, gt=0, description="global batch, split across DDP ranks")
    eval_batch_size: int = Field(1000, gt=0)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from harness.data import REGISTRY

        return known("data set", REGISTRY, v)

    @model_validator(mode="after")
    def _root_needed(self):
        if self.name != "digits" and not self.root:
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

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from harness.optim import REGISTRY

        return known("optimizer", REGISTRY, v)


class ScheduleCfg(Strict):
    name: str = "constant"
    unit: Unit = Field("epoch", description="unit of milestones and t0")
    milestones: list[int] = Field(default_factory=list)
    factor: float = Field(0.1, gt=0, description="step: LR multiplier at each milestone")
    t0: int = Field(10, gt=0, description="sgdr: first cycle length")
    t_mult: int = Field(2, ge=1, description="sgdr: cycle length multiplier")
    eta_min: float = Field(0.0, ge=0, description="floor of linear, cosine and sgdr")
    eta_max: Optional[float] = Field(None, gt=0, description="sgdr peak; defaults to optim.lr")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from harness.schedules import REGISTRY

        return known("schedule", REGISTRY, v)

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


class TrialConfig(Strict):
    name: str = "trial"
    seed: int = Field(0, ge=0)
    model: ModelCfg
    data: DataCfg
    optim: OptimCfg
    schedule: ScheduleCfg = Field(default_factory=ScheduleCfg)
    warmup: WarmupCfg = Field(default_factory=WarmupCfg)
    freeze: FreezeCfg = Field(default_factory=FreezeCfg)
    distill: Optional[DistillCfg] = None
    budget: BudgetCfg
    eval: EvalCfg = Field(default_factory=EvalCfg)
    checkpoints: CheckpointCfg = Field(default_factory=CheckpointCfg)
    perf: PerfCfg = Field(default_factory=PerfCfg)
    tags: dict[str, Scalar] = Field(default_factory=dict, description="swept values, one metrics column each")

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.optim.name == "sphere_sgd" and self.optim.weight_decay:
            raise ValueError("optim.weight_decay must be 0 for sphere_sgd (the sphere fixes the norm)")
        return self

    def trial_id(self) -> str:
        """Stable id: hash of the resolved config (name excluded so renaming keeps results)."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"name"}), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def format_error(err: ValidationError, source: str) -> str:
    """First pydantic error as one line: file, dotted key, bad value, expectation."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    if e["type"] == "missing":
        return f"{source}: missing required key {key!r}"
    return f"{source}: {key} = {e.get('input')!r}: {msg}"


def parse_trial(raw: Any, source: str = "<config>") -> TrialConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(raw).__name__}")
    try:
        return TrialConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_error(err, source)) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(err, 'problem', err)})") from None


def load_trial(path: str | Path) -> TrialConfig:
    return parse_trial(read_yaml(path), str(path))


def dump(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
