"""Loss-catapult eta_init: against a brute-force numpy version for softmax regression, and in a real trial."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.catapult import catapult_lr
from harness.config import OptimCfg, parse_trial
from harness.train import run_trial


def numpy_catapult(W, b, x, y, start, factor, target, steps):
    """Plain gradient descent on softmax regression from (W, b), `steps` steps per LR; the first LR at which
    the loss goes above its starting value."""
    def loss_grad(W, b):
        z = x @ W.T + b
        z = z - z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y]).mean()
        p[np.arange(len(y)), y] -= 1
        return loss, p.T @ x / len(y), p.mean(0)

    loss0 = loss_grad(W, b)[0]
    lr = start
    while lr < target:
        w, c = W, b
        for _ in range(steps + 1):
            loss, gW, gb = loss_grad(w, c)
            if not loss <= loss0:
                return lr
            w, c = w - lr * gW, c - lr * gb
        lr *= factor
    return target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_catapult_matches_numpy_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 20, generator=g, dtype=torch.float64) * 3, torch.randint(0, 5, (64,), generator=g)
    model = nn.Linear(20, 5).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = catapult_lr(model, OptimCfg(name="sgd", lr=100.0), x, y, target=100.0, start=1e-3, steps=5)
    want = numpy_catapult(before["weight"].numpy(), before["bias"].numpy(), x.numpy(), y.numpy(), 1e-3, 2.0, 100.0, 5)
    assert got == pytest.approx(want, rel=1e-12) and 1e-3 < got < 100.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is left as it was
    assert all(p.grad is None for p in model.parameters())


def test_catapult_returns_target_when_nothing_spikes_below_it():
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    assert catapult_lr(nn.Linear(4, 3), OptimCfg(name="sgd", lr=1e-3), x, y, target=1e-3, start=1e-4) == 1e-3


def test_catapult_warmup_in_a_trial(trial_dict, tmp_path):
    trial_dict["warmup"] = {"length": 8, "eta_init": "catapult"}
    trial_dict["optim"]["lr"] = 50.0  # far above the catapult LR of this CNN
    trial_dict["data"]["batch_size"] = 10  # up to 19 probes of 10 steps each
    cfg = parse_trial(trial_dict)
    run_trial(cfg, tmp_path)
    eta = json.loads((tmp_path / "trials" / cfg.trial_id() / "status.json").read_text())["eta_init"]
    assert 1e-4 <= eta < 50.0
    steps = pd.read_parquet(tmp_path / "metrics").query("kind == 'step'").set_index("iteration").lr
    assert steps[0] == pytest.approx(eta) and steps[2] == pytest.approx(eta + (50.0 - eta) * 2 / 8)


def test_bad_eta_init_is_one_line(trial_dict):
    trial_dict["warmup"] = {"length": 8, "eta_init": "spike"}
    with pytest.raises(ValueError, match="warmup.eta_init"):
        parse_trial(trial_dict)
