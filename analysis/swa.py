"""Stochastic weight averaging of saved checkpoints (Izmailov et al. 2018, sec. 3.1-3.2)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from analysis.evaluation import Batches, evaluate, update_bn


def average_states(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Equal-weight mean of floating-point entries; integer buffers (BN batch counts) from the last state."""
    if not states:
        raise ValueError("SWA needs at least one checkpoint")
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError(f"checkpoints hold different tensors: {sorted(keys ^ set(s))[:5]}")
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in states[-1].items()}


def swa(model: nn.Module, states: Sequence[dict[str, Tensor]], bn_batches: Batches | None) -> nn.Module:
    """Load the average of `states` into `model`, then recompute its BN statistics on `bn_batches`."""
    model.load_state_dict(average_states(states))
    update_bn(model, bn_batches)
    return model


def swa_rows(model: nn.Module, states: Sequence[dict[str, Tensor]], splits: dict[str, Batches],
             bn_batches: Batches | None) -> tuple[pd.DataFrame, nn.Module]:
    """`swa`, then loss and accuracy of the average per split: rows (split, loss, accuracy), and the averaged model."""
    model = swa(model, states, bn_batches)
    return pd.DataFrame([{"split": name, **evaluate(model, b)} for name, b in splits.items()]), model
