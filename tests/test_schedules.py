import math

import pytest

from harness import schedules
from harness.config import ScheduleCfg, WarmupCfg
from harness.warmup import with_warmup

SPE = 10  # iterations per epoch


def lr_fn(total=2000, warmup=None, **kw):
    w = WarmupCfg(**(warmup or {}))
    return with_warmup(schedules.build(ScheduleCfg(**kw), 0.05, SPE, total), w, w.eta_init, SPE)


def test_constant():
    f = lr_fn(name="constant")
    assert [f(i) for i in (0, 7, 1999)] == [0.05] * 3


def test_step_matches_closed_form():
    f = lr_fn(name="step", milestones=[60, 120, 160], factor=0.2)
    for it in (0, 599, 600, 1199, 1200, 1599, 1600, 1999):
        k = sum(it >= m * SPE for m in (60, 120, 160))
        assert f(it) == pytest.approx(0.05 * 0.2 ** k, rel=1e-12)


def test_step_in_iterations():
    f = lr_fn(name="step", milestones=[5], factor=0.1, unit="iteration")
    assert f(4) == 0.05 and f(5) == pytest.approx(0.005)


def test_linear_and_cosine_over_budget():
    lin, cos = lr_fn(name="linear", total=1000), lr_fn(name="cosine", total=1000, eta_min=1e-4)
    for it in (0, 250, 500, 999, 1000):
        assert lin(it) == pytest.approx(0.05 * (1 - it / 1000))
        assert cos(it) == pytest.approx(1e-4 + 0.5 * (0.05 - 1e-4) * (1 + math.cos(math.pi * it / 1000)))


def test_sgdr_restarts_at_10_30_70_150_epochs():
    f = lr_fn(name="sgdr", t0=10, t_mult=2, eta_min=1e-6, eta_max=0.05)
    for start, length in [(0, 10), (10, 20), (30, 40), (70, 80), (150, 160)]:
        it0 = start * SPE
        assert f(it0) == pytest.approx(0.05), start
        mid = it0 + length * SPE // 2
        assert f(mid) == pytest.approx(1e-6 + 0.5 * (0.05 - 1e-6)), start
        if start:
            assert f(it0 - 1) < 1e-4  # just before a restart the LR is near eta_min
    # closed form inside the third cycle [30, 70) epochs
    it = 45 * SPE + 3
    t_cur, t_i = it - 30 * SPE, 40 * SPE
    assert f(it) == pytest.approx(1e-6 + 0.5 * (0.05 - 1e-6) * (1 + math.cos(math.pi * t_cur / t_i)))


def test_sgdr_eta_max_defaults_to_base_lr():
    assert lr_fn(name="sgdr")(0) == 0.05


def test_linear_warmup_from_eta_init_composes_with_step():
    f = lr_fn(name="step", milestones=[60], warmup={"length": 200, "eta_init": 0.0})
    assert f(0) == 0.0
    assert f(100) == pytest.approx(0.025)
    assert f(199) == pytest.approx(0.05 * 199 / 200)
    assert f(200) == 0.05 and f(600) == pytest.approx(0.005)


def test_warmup_in_epochs_with_nonzero_eta_init_follows_cosine():
    f = lr_fn(name="cosine", total=1000, warmup={"length": 2, "unit": "epoch", "eta_init": 0.01})
    cos = lr_fn(name="cosine", total=1000)
    assert f(0) == pytest.approx(0.01)
    assert f(10) == pytest.approx(0.01 + (cos(10) - 0.01) * 10 / 20)
    assert f(20) == cos(20)
