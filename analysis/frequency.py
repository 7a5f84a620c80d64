"""Frequency probes (S5, Sadrtdinov et al. 2024): test sets filtered to low / mid / high spatial
frequencies plus a background-only variant, and a checkpoint's accuracy on each.

Filters are ideal radial masks on the 2-D FFT of every channel; radius 1.0 is the Nyquist
frequency along one axis (0.5 cycles/pixel), so corners reach sqrt(2). Mid and high bands
keep each image's mean colour (the DC term) so they stay valid uint8 images.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.evaluation import Batches, LossFn, evaluate
from analysis.loading import build_model


def radial_frequency(height: int, width: int) -> Tensor:
    """|f| per FFT bin in Nyquist units: [height, width], float64, DC at [0, 0]."""
    fy, fx = torch.fft.fftfreq(height, dtype=torch.float64), torch.fft.fftfreq(width, dtype=torch.float64)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5


def band_pass(images: Tensor, low: float, high: float) -> Tensor:
    """Float images keeping only frequencies with low <= |f| < high (ideal mask, per channel)."""
    x = images.double()
    mask = radial_frequency(*x.shape[-2:]).to(x.device)
    mask = ((mask >= low) & (mask < high)).to(x.dtype)
    return torch.fft.ifft2(torch.fft.fft2(x) * mask).real


def background_only(images: Tensor, box: float = 0.5) -> Tensor:
    """Images with the central box (side `box` of the image; CIFAR objects are roughly centred)
    filled with each image's mean border colour: no segmentation masks are available here."""
    h, w = images.shape[-2:]
    bh, bw = round(h * box), round(w * box)
    top, left = (h - bh) // 2, (w - bw) // 2
    inside = torch.zeros(h, w, dtype=torch.bool, device=images.device)
    inside[top : top + bh, left : left + bw] = True
    border = images.double()[..., ~inside].mean(-1)  # [N, C]
    out = images.clone()
    out[..., inside] = border.round().to(images.dtype)[..., None]
    return out


def _to_uint8(x: Tensor) -> Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


def variants(images: Tensor, cutoffs: tuple[float, float] = (1 / 3, 2 / 3), box: float = 0.5) -> dict[str, Tensor]:
    """uint8 test-set variants: original, low (|f| < c1), mid (c1 <= |f| < c2), high (|f| >= c2), background."""
    c1, c2 = cutoffs
    if not 0 < c1 < c2:
        raise ValueError(f"cutoffs {cutoffs}: expected 0 < low < high (Nyquist units)")
    dc = images.double().mean(dim=(-2, -1), keepdim=True)
    return {
        "original": images,
        "low": _to_uint8(band_pass(images, 0.0, c1)),
        "mid": _to_uint8(band_pass(images, c1, c2) + dc),
        "high": _to_uint8(band_pass(images, c2, float("inf")) + dc),
        "background": background_only(images, box),
    }


def frequency_accuracy(model: nn.Module, images: Tensor, labels: Tensor,
                       transform: Callable[[Tensor], Tensor] | None = None, batch_size: int = 500,
                       cutoffs: tuple[float, float] = (1 / 3, 2 / 3), box: float = 0.5,
                       loss_fn: LossFn = F.cross_entropy) -> list[dict]:
    """Loss and accuracy of `model` on every variant of a uint8 test set: rows (variant, loss, accuracy)."""
    return [{"variant": name, **evaluate(model, Batches(x, labels, batch_size, transform), loss_fn)}
            for name, x in variants(images, cutoffs, box).items()]


def frequency(ckpts: Mapping[str, dict[str, Any]], test: Batches, cutoffs: tuple[float, float] = (1 / 3, 2 / 3),
              box: float = 0.5, device: str | torch.device = "cpu") -> pd.DataFrame:
    """`frequency_accuracy` of each checkpoint (id -> dict) on `test`: rows ckpt, variant, loss, accuracy."""
    return pd.DataFrame([{"ckpt": ckpt_id, **r} for ckpt_id, ckpt in ckpts.items()
                         for r in frequency_accuracy(build_model(ckpt, ckpt_id, device), test.inputs, test.labels,
                                                     test.transform, test.batch_size, tuple(cutoffs), box)])
