"""The names a trial config may give for each kind of component, without torch.

This is THE registry: `harness.config` checks a YAML's model/data/optim/schedule name against it (so validating a
config, and `heurbench sweep plan` of a large grid, never imports torch), and each torch module declares its
builders with `builders(kind, {...})`, which refuses a table whose keys are not exactly these names. A name
added here without a builder, or a builder without a name here, fails when that module is imported.
"""
from __future__ import annotations

from typing import TypeVar

NAMES: dict[str, tuple[str, ...]] = {
    "model": ("vgg11", "vgg16", "resnet18", "resnet32", "si_resnet18", "student_cnn"),  # harness/models.py
    "data set": ("cifar10", "cifar100", "parquet", "digits"),  # harness/data.py
    "optimizer": ("sgd", "adam", "gi_adam", "sphere_sgd"),  # harness/optim.py
    "schedule": ("constant", "step", "linear", "cosine", "sgdr"),  # harness/schedules.py
}

T = TypeVar("T")


def builders(kind: str, table: dict[str, T]) -> dict[str, T]:
    """`table` (name -> builder of `kind`) if its names are exactly NAMES[kind]; else an error naming the
    difference (raised when the module holding the table is imported)."""
    names = NAMES[kind]
    if set(table) != set(names) or len(table) != len(names):
        missing, extra = sorted(set(names) - set(table)), sorted(set(table) - set(names))
        raise RuntimeError(f"harness.registry: the {kind} builders do not match NAMES[{kind!r}]: "
                           f"no builder for {missing}, not registered {extra}")
    return table


def known(kind: str, name: str) -> str:
    """`name` if it is a registered name of `kind`, else the one-line error listing the known names."""
    if name not in NAMES[kind]:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(NAMES[kind])}")
    return name
