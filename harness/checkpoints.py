"""Trial checkpoints: model, optimizer, RNG and step in one file, plus the specs to rebuild the model.

Everything saved is plain tensors, numbers, strings, lists and mappings, so checkpoints load
with `weights_only=True`: opening one never runs code from the file.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import confine
from harness.errors import CheckpointError
from harness.layout import RunDir
from harness.models import build
from harness.storage import save_torch


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, **payload: Any) -> Path:
    return save_torch(path, payload)


def load(path: str | Path, device="cpu", needs: tuple[str, ...] = ("model", "model_spec")) -> dict:
    """A heurbench checkpoint's dict, unpickled with weights_only=True (no code from the file runs), holding at
    least the keys `needs`."""
    confine.readable(path)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not a readable heurbench checkpoint (it holds objects other than tensors and "
                              f"plain values; refused, since loading them could run code)") from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable heurbench checkpoint (truncated or corrupt: "
                              f"{str(err).split('. ')[0]})") from None
    missing = [k for k in needs if k not in ckpt] if isinstance(ckpt, dict) else list(needs)
    if missing:
        raise CheckpointError(f"{path}: not a heurbench checkpoint (a {type(ckpt).__name__} without {missing})")
    return ckpt


def load_model(path: str | Path, device="cpu") -> nn.Module:
    """Rebuild the model of a checkpoint through `harness.models.build` and load its weights."""
    ckpt = load(path, device)
    model = build(ckpt["model_spec"]).to(device)
    load_weights(model, ckpt["model"], path)
    return model


def load_weights(model: nn.Module, state: dict, source: str | Path) -> None:
    """`model.load_state_dict(state)`, or one CheckpointError naming `source` and the first tensor that does not
    fit (missing, unexpected or of another shape) instead of torch's multi-line report."""
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise CheckpointError(f"{source}: its weights do not fit the model: no tensor {name!r} "
                                  f"(a checkpoint of another architecture?)")
        shape = tuple(getattr(state[name], "shape", ()))
        if shape != tuple(tensor.shape):
            raise CheckpointError(f"{source}: its weights do not fit the model: {name!r} is {list(shape)} in the "
                                  f"checkpoint, {list(tensor.shape)} in the model")
    extra = next((k for k in state if k not in own), None)
    if extra is not None:
        raise CheckpointError(f"{source}: its weights do not fit the model: unexpected tensor {extra!r}")
    model.load_state_dict(state)


def load_ref(ref: str, out: Path, device="cpu") -> dict:
    """The checkpoint a config names (`model.init_from`, `distill.teacher`): a path, or '@sweep:point:file' in a
    sibling of the run folder `out` (harness.layout)."""
    return load(RunDir(out).reference(ref), device)
