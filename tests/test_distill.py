import copy

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import BASE_TRIAL
from harness import checkpoints, data as data_mod, distill
from harness.config import parse_trial
from harness.distill import Distill, kd_loss
from harness.heuristics import Context
from harness.train import run_trial


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_kd_loss_matches_hand_computed_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    T = 5.0
    p, q = np_softmax(t.numpy() / T), np_softmax(s.numpy() / T)
    kl = (p * (np.log(p) - np.log(q))).sum(1).mean() * T * T
    assert abs(kd_loss(s, t, y, T, 1.0).item() - kl) < 1e-12
    ls = s.numpy() - s.numpy().max(1, keepdims=True)
    ce = -(ls - np.log(np.exp(ls).sum(1, keepdims=True)))[np.arange(6), y.numpy()].mean()
    assert abs(kd_loss(s, t, y, T, 0.3).item() - (0.3 * kl + 0.7 * ce)) < 1e-12


def test_kd_loss_zero_when_student_equals_teacher():
    z = torch.randn(4, 10)
    assert kd_loss(z, z.clone(), torch.zeros(4, dtype=torch.long), 5.0, 1.0).abs().item() < 1e-6


@pytest.fixture(scope="module")
def teacher_pt(tmp_path_factory):
    """A teacher checkpoint: the tiny trial of conftest's BASE_TRIAL, trained for its 16 iterations."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = parse_trial(copy.deepcopy(BASE_TRIAL))
    assert run_trial(cfg, out) == "done"
    return str(out / "trials" / cfg.trial_id() / "ckpt" / "last.pt")


def student(trial_dict, teacher_pt, **data):
    trial_dict["data"].update(augment=False, **data)
    trial_dict["distill"] = {"teacher": teacher_pt, "temperature": 4.0, "weight": 0.7}
    return parse_trial(trial_dict)


def test_cached_teacher_logits_are_looked_up_by_global_train_index(trial_dict, teacher_pt, tmp_path):
    cfg = student(trial_dict, teacher_pt, train_subset=70, eval_batch_size=32)
    ds = data_mod.load(cfg.data)
    h = Distill(cfg.distill, Context(cfg, None, 1, 1, tmp_path, torch.device("cpu"), ds))
    teacher = checkpoints.load_model(teacher_pt).eval()
    with torch.no_grad():
        assert h.teacher is None and torch.allclose(h.cached, teacher(ds.normalize(ds.train.images)), atol=1e-6)
        plan = data_mod.plan_epoch(ds, 3, 1, 2, 30, False)
        idx, aug = data_mod.batch_indices(plan, 1, rank=1, world=2)  # rank 1's half of the epoch's second batch
        x, y = data_mod.gather(ds, idx, aug)
        assert torch.equal(idx, plan.order[45:60])
        s = torch.randn(15, 10)
        expected = kd_loss(s, teacher(x), y, 4.0, 0.7)
    assert torch.allclose(h.loss(s, x, y, None, idx), expected, atol=1e-6)


def test_cached_and_per_batch_teacher_train_alike(trial_dict, teacher_pt, tmp_path, monkeypatch):
    """Same seed, augment false: every iteration's loss with the cached logits is the per-batch teacher's."""
    trial_dict["eval"]["train_stride"] = 1
    cfg = student(trial_dict, teacher_pt)
    losses = []
    for name in ("cached", "per_batch"):
        if name == "per_batch":
            monkeypatch.setattr(distill, "cacheable", lambda cfg: False)  # the teacher on every batch
        assert run_trial(cfg, tmp_path / name) == "done"
        steps = pd.read_parquet(tmp_path / name / "metrics").query("kind == 'step'").sort_values("iteration")
        losses.append(steps.loss.to_numpy())
    assert len(losses[0]) == 16
    np.testing.assert_allclose(losses[0], losses[1], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_cached_teacher_over_two_ddp_ranks_matches_one_process(trial_dict, teacher_pt, tmp_path):
    """Each rank looks its shard up by global train index: the losses are one process's (to test_ddp's 1e-5)."""
    from harness.runner import run_point

    trial_dict["eval"]["train_stride"] = 1
    cfg = student(trial_dict, teacher_pt)
    assert run_trial(cfg, tmp_path / "one") == "done"
    assert run_point(cfg, tmp_path / "two", workers=2) == "done"
    one, two = (pd.read_parquet(tmp_path / n / "metrics").query("kind == 'step'").sort_values("iteration")
                for n in ("one", "two"))
    assert (two.world_size == 2).all() and len(one) == len(two) == 16
    np.testing.assert_allclose(one.loss.to_numpy(), two.loss.to_numpy(), rtol=1e-5)
