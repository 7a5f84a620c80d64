"""Layer outputs over a fixed input set, and their reshaping into data points for CCA/CKA.

Conv layers follow Raghu et al. 2017 (sec. 2.1) and Morcos et al. 2018: every spatial
position of every image is a data point with C features, i.e. [N, C, H, W] -> [N*H*W, C].
Two layers of different resolution are first average-pooled to the smaller H x W so
their positions correspond. Cost: CCA on P = N*H*W points and C features is O(P*C^2),
so P is capped by a seeded subsample (`max_points`); `conv="mean"` (spatial average,
P = N) is the cheap alternative. The DFT-based variant of Raghu et al. (per-frequency
CCA, exact only for translation-invariant layers with circular padding) is not provided.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.evaluation import device_of
from harness.errors import ConfigError


def fixed_inputs(images: Tensor, n: int | None = None, seed: int | None = None, split: str = "chosen") -> Tensor:
    """The first n images (seed None) or a seeded random subset of n, in a fixed order; all when n is None.
    More than the `split` holds is a one-line ConfigError, never a silent cap."""
    if n is None:
        return images
    if n > images.shape[0]:
        raise ConfigError(f"--inputs {n}: the {split} split has only {images.shape[0]} images")
    if seed is None:
        return images[:n]
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx.sort().values]


def capture(model: nn.Module, layers: Sequence[str], inputs: Tensor, batch_size: int = 256,
            transform: Callable[[Tensor], Tensor] | None = None, pool_to: int | None = None) -> dict[str, Tensor]:
    """Outputs of the named modules over `inputs`, as float32 CPU tensors keyed by module path.

    Forward hooks in eval mode under no_grad, batches on the model's device; `transform`
    (e.g. `Dataset.normalize`) runs per batch there. `pool_to` average-pools conv outputs
    to at most pool_to x pool_to positions per image to bound memory.
    """
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules]
    if missing:
        raise ValueError(f"no module named {missing} in {type(model).__name__}")
    device, was_training = device_of(model), model.training
    chunks: dict[str, list[Tensor]] = {name: [] for name in layers}

    def hook(name: str):
        def keep(_module, _inputs, output):
            if pool_to is not None and output.dim() == 4 and max(output.shape[-2:]) > pool_to:
                output = F.adaptive_avg_pool2d(output, (min(pool_to, output.shape[-2]), min(pool_to, output.shape[-1])))
            chunks[name].append(output.detach().float().cpu())
        return keep

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, inputs.shape[0], batch_size):
                x = inputs[i : i + batch_size].to(device)
                model(transform(x) if transform else x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(c) for name, c in chunks.items()}


def _grid(a: Tensor, b: Tensor, conv: str) -> tuple[int, int] | None:
    """The common H x W two conv layers' positions are pooled to (None: one point per input)."""
    if conv not in ("positions", "mean"):
        raise ValueError(f"conv={conv!r}; expected 'positions' or 'mean'")
    if a.dim() == 4 and b.dim() == 4 and conv == "positions":
        return min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    return None


def points(a: Tensor, b: Tensor, conv: str = "positions") -> int:
    """How many data points `to_points` makes of two layers before subsampling: N * H * W or N."""
    size = _grid(a, b, conv)
    return a.shape[0] * (size[0] * size[1] if size else 1)


def _spatial_points(a: Tensor, size: tuple[int, int]) -> Tensor:
    a = F.adaptive_avg_pool2d(a, size) if tuple(a.shape[-2:]) != size else a
    return a.permute(0, 2, 3, 1).reshape(-1, a.shape[1])


def to_points(a: Tensor, b: Tensor, conv: str = "positions", max_points: int | None = 20_000,
              seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two layers' activations over the same inputs as matched [points, features] matrices.

    conv="positions": conv maps pooled to a common H x W and flattened to (N*H*W, C), then
    at most `max_points` rows kept (same seeded rows for both). conv="mean": spatial mean.
    A conv layer paired with a flat one is always spatially averaged. Other shapes flatten.
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"activations cover different inputs: {a.shape[0]} vs {b.shape[0]} rows")
    size = _grid(a, b, conv)
    if size:
        a, b = _spatial_points(a, size), _spatial_points(b, size)
    else:
        a, b = (t.mean(dim=(2, 3)) if t.dim() == 4 else t.reshape(t.shape[0], -1) for t in (a, b))
    if max_points is not None and a.shape[0] > max_points:
        idx = torch.randperm(a.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        a, b = a[idx.to(a.device)], b[idx.to(b.device)]
    return a, b
