"""Reading what the harness wrote: checkpoint files and their ids, the models and data they name; saving
the models an analysis makes; `Checkpoints`, the files one analysis runs on and the run folder it records to.

Checkpoints are opened, models and data rebuilt only through the harness's public
`harness.checkpoints.load` and `load_weights`, `harness.models.build` and `harness.data.load` (DESIGN: analysis
never imports other harness internals).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

from analysis import results
from analysis.evaluation import Batches
from harness.layout import RunDir, run_of_checkpoint, trial_of_checkpoint

log = logging.getLogger("heurbench.analysis")


def load(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, loaded as the harness loads it (`weights_only=True`: no code from the file runs);
    it must hold a model and its spec."""
    from harness.checkpoints import load as load_checkpoint

    path = Path(path)
    ckpt = load_checkpoint(path, device)
    ckpt.setdefault("path", str(path))
    return ckpt


def checkpoint_id(path: str | Path, trial_id: str | None = None) -> str:
    """"<trial_id>/<file stem>", the key analysis rows use for a checkpoint; the trial is the one the checkpoint
    stores, else the one its path names."""
    return f"{trial_id or trial_of_checkpoint(path)}/{Path(path).stem}"


def save_derived(path: Path, model: nn.Module, source: dict[str, Any], trial_id: str, **extra: Any) -> Path:
    """Save a model made by an analysis (curve bend, SWA average) as a checkpoint later analyses can load."""
    payload = {"model": model.state_dict(), "model_spec": source["model_spec"], "data_spec": source.get("data_spec"),
               "trial_id": trial_id, **extra}
    return results.atomic_write(path, lambda tmp: torch.save(payload, tmp))


def build_model(ckpt: dict[str, Any], name: str, device: str | torch.device = "cpu") -> nn.Module:
    """Checkpoint `name`'s model via `harness.models.build`, weights loaded, on `device`, in eval mode."""
    from harness.checkpoints import load_weights
    from harness.models import build

    model = build(ckpt["model_spec"])
    load_weights(model, ckpt["model"], name)
    return model.to(device).eval()


def load_data(spec: dict[str, Any]):
    """`harness.data.load(spec)`: a Dataset with .train/.val/.test splits and .normalize."""
    from harness.data import load as load_dataset

    return load_dataset(spec)


@dataclass
class Checkpoints:
    """The checkpoint files one analysis runs on: their dicts and ids, the data set, device and batch size, and
    the run folder its rows (analysis/<kind>/) and models (derived/<kind>/) go to."""

    ckpts: list[dict[str, Any]]
    ids: list[str]
    data: Any
    device: torch.device
    run: RunDir
    batch_size: int = 500
    written: list[Path] = field(default_factory=list)  # every part `write` recorded (the caller logs them)

    @classmethod
    def open(cls, paths: Sequence[str | Path], data: dict[str, Any] | None = None, device: str | None = None,
             out: str | Path | None = None, batch_size: int = 500) -> "Checkpoints":
        """Load `paths`; the data spec is the first checkpoint's updated by `data`; results go to `out`
        (default: the first checkpoint's run folder); device default: cuda if available, else cpu."""
        ckpts = [load(p) for p in paths]
        spec = {**(ckpts[0].get("data_spec") or {}), **(data or {})}
        if not spec:
            raise ValueError("no data spec: the checkpoint has none; pass --data spec.yaml or --set name=...")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        run = RunDir(out) if out else run_of_checkpoint(paths[0])
        ids = [checkpoint_id(p, c.get("trial_id")) for p, c in zip(paths, ckpts)]
        return cls(ckpts, ids, load_data(spec), device, run, batch_size)

    def model(self, i: int = 0) -> nn.Module:
        return build_model(self.ckpts[i], self.ids[i], self.device)

    def states(self) -> dict[str, dict[str, torch.Tensor]]:
        """Weights per checkpoint id."""
        return {i: c["model"] for i, c in zip(self.ids, self.ckpts)}

    def by_id(self) -> dict[str, dict[str, Any]]:
        return dict(zip(self.ids, self.ckpts))

    def batches(self, split: str, n: int | None = None) -> Batches:
        """The first n images (all when None) of one split, normalised per batch."""
        part = getattr(self.data, split)
        if part is None:
            raise ValueError(f"the data spec has no {split} split")
        return Batches(part.images, part.labels, self.batch_size, self.data.normalize).head(n)

    def splits(self, train_images: int | None = None, test_images: int | None = None) -> dict[str, Batches]:
        """Train (first train_images), val (if the data has one) and test (first test_images) batches."""
        out = {"train": self.batches("train", train_images)}
        if self.data.val is not None:
            out["val"] = self.batches("val")
        return {**out, "test": self.batches("test", test_images)}

    def write(self, kind: str, rows: pd.DataFrame, ids: Sequence[str] | None = None, **params: Any) -> Path:
        """Record one part of analysis rows keyed by `ids` (default: all the checkpoints) and `params`."""
        path = results.write(self.run.path, kind, rows, self.ids if ids is None else ids, params)
        log.debug("wrote %d %s rows to %s", len(rows), kind, path)
        self.written.append(path)
        return path

    def write_each(self, kind: str, rows: pd.DataFrame, by: Sequence[str], **params: Any) -> list[Path]:
        """One part per group of rows: the `by` columns (checkpoint ids) key each part instead of being columns."""
        return [self.write(kind, part.drop(columns=list(by)), list(key), **params)
                for key, part in rows.groupby(list(by), sort=False)]

    def save(self, path: Path, model: nn.Module, kind: str, **extra: Any) -> Path:
        """Save a model this analysis made (as `kind`, built like the first checkpoint's)."""
        return save_derived(path, model, self.ckpts[0], kind, **extra)
