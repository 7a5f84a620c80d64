"""Loss-catapult choice of warmup's starting LR (Kalra & Barkeshli, "Why warmup the learning rate?").

Above the critical LR eta_c ~ 2 / sharpness, the component of the weights along the sharpest
direction grows each step, and within a few steps the loss goes up (the catapult). `catapult_lr`
raises the LR geometrically from `start`; for each LR it takes `steps` optimizer steps from the
initial weights on one fixed batch and returns the first LR at which that batch's loss rises above
its starting value. Warmup then starts there instead of at 0 (`warmup.eta_init: catapult`: the warmup
heuristic's probe, on the first global batch, the same on every DDP rank); if no LR below the target
spikes, warmup is not needed and the target is returned.
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from harness import optim
from harness.config import OptimCfg

log = logging.getLogger("heurbench.train")


def loss_rises(model: nn.Module, opt_cfg: OptimCfg, lr: float, x: torch.Tensor, y: torch.Tensor, loss0: float,
               steps: int) -> bool:
    """Whether `steps` steps of the optimizer at `lr` on (x, y) take the loss above loss0 (NaN/inf count)."""
    opt = optim.build(opt_cfg, model)
    optim.set_lr(opt, lr)
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).float(), y)
        if i and not loss.item() <= loss0:  # step 0 is loss0 itself (up to nondeterministic kernels)
            return True
        loss.backward()
        opt.step()
    with torch.no_grad():
        return not F.cross_entropy(model(x).float(), y).item() <= loss0


def catapult_lr(model: nn.Module, opt_cfg: OptimCfg, x: torch.Tensor, y: torch.Tensor, target: float,
                start: float = 1e-4, factor: float = 2.0, steps: int = 10) -> float:
    """Smallest LR in start * factor^k (k = 0, 1, ...) below `target` whose first `steps` steps raise the
    loss on (x, y); `target` if none does. The model's weights and buffers are left exactly as they were."""
    saved = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        loss0 = F.cross_entropy(model(x).float(), y).item()
    lr, found = start, target
    try:
        while lr < target:
            model.load_state_dict(saved)  # every probe starts from the initial weights and BN statistics
            if loss_rises(model, opt_cfg, lr, x, y, loss0, steps):
                found = lr
                break
            lr *= factor
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
    log.info("loss catapult: eta_init = %.4g (loss %.4f at init; target %.4g)", found, loss0, target)
    return found
