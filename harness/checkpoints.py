"""Trial checkpoints: model, optimizer, RNG and step in one file, plus the specs to rebuild the model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.models import build
from harness.storage import save_torch


def name_for(iteration: int, epoch: int | None = None) -> str:
    """Checkpoint file name: epoch=030.pt when taken at a listed epoch, else iter=000200.pt."""
    return f"epoch={epoch:03d}.pt" if epoch is not None else f"iter={iteration:06d}.pt"


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


def load(path: str | Path, device="cpu") -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as err:
        raise ValueError(f"{path}: not a readable heurbench checkpoint ({err})") from None


def load_model(path: str | Path, device="cpu") -> nn.Module:
    """Rebuild the model of a checkpoint through `harness.models.build` and load its weights."""
    ckpt = load(path, device)
    model = build(ckpt["model_spec"]).to(device)
    model.load_state_dict(ckpt["model"])
    return model
