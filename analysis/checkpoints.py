"""Reading what the harness wrote: checkpoint files, their ids, the models and data they name.

Models and data are rebuilt only through the harness's public `harness.models.build` and
`harness.data.load` (DESIGN: analysis never imports other harness internals).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from analysis.results import atomic_write


def load(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict (trusted files: optimizer and RNG state are pickled objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    missing = [k for k in ("model", "model_spec") if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a heurbench checkpoint (missing {missing})")
    ckpt.setdefault("path", str(path))
    return ckpt


def checkpoint_id(ckpt: dict[str, Any]) -> str:
    """"<trial_id>/<file stem>", the key analysis rows use for a checkpoint."""
    path = Path(ckpt["path"])
    trial = ckpt.get("trial_id") or (path.parent.parent.name if path.parent.name == "ckpt" else path.parent.name)
    return f"{trial}/{path.stem}"


def sweep_dir(path: str | Path) -> Path:
    """runs/<sweep> for runs/<sweep>/trials/<trial>/ckpt/<file>.pt and runs/<sweep>/derived/<kind>/<file>.pt;
    the file's folder otherwise."""
    path = Path(path).resolve()
    if path.parent.name == "ckpt" and path.parents[2].name == "trials":
        return path.parents[3]
    if path.parents[1].name == "derived":
        return path.parents[2]
    return path.parent


def save_derived(path: Path, model: nn.Module, source: dict[str, Any], trial_id: str, **extra: Any) -> Path:
    """Save a model made by an analysis (curve bend, SWA average) as a checkpoint later analyses can load."""
    payload = {"model": model.state_dict(), "model_spec": source["model_spec"], "data_spec": source.get("data_spec"),
               "trial_id": trial_id, **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def build_model(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The checkpoint's model via `harness.models.build`, weights loaded, on `device`, in eval mode."""
    from harness.models import build

    model = build(ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def load_data(spec: dict[str, Any]):
    """`harness.data.load(spec)`: a Dataset with .train/.val/.test splits and .normalize."""
    from harness.data import load as load_dataset

    return load_dataset(spec)
