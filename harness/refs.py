"""Checkpoint references across sweeps: '@<sweep>:<point>:<file>' in a trial config.

A study that needs another's checkpoints (a distillation teacher, pre-trained points to
fine-tune) names them by sweep, grid-point index and checkpoint file; the path is found
at run time from that sweep's resolved `sweep.yaml` beside this one's results, so trial
ids stay independent of where `runs/` lives.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from harness.config import ConfigError


def resolve(ref: str, out: Path) -> Path:
    """A plain path, or the file a '@sweep:point:file' reference names under `out`'s parent."""
    if not ref.startswith("@"):
        return Path(ref)
    try:
        sweep, point, file = ref[1:].split(":")
        index = int(point)
    except ValueError:
        raise ConfigError(f"checkpoint reference {ref!r}: expected '@<sweep>:<point index>:<file>'") from None
    resolved = Path(out).parent / sweep / "sweep.yaml"
    if not resolved.is_file():
        raise FileNotFoundError(f"checkpoint reference {ref!r}: {resolved} not found (run sweep {sweep!r} first)")
    points = {p["index"]: p["trial_id"] for p in yaml.safe_load(resolved.read_text())["points"]}
    if index not in points:
        raise ConfigError(f"checkpoint reference {ref!r}: sweep {sweep!r} has points {sorted(points)}")
    return resolved.parent / "trials" / points[index] / "ckpt" / file
