"""harness.estimate: a sweep's time from a probe of each distinct setting, summed over its trials."""
import pytest
import yaml

import torch

from harness.estimate import SLURM_MARGIN, estimate, hms, report, timed
from harness.grid import read_sweep


@pytest.fixture
def sweep(trial_dict, tmp_path):
    """2 batch sizes x 2 budgets x 2 seeds on 400 train / 200 test images, evaluated every 8 iterations."""
    spec = {"name": "est", "base": trial_dict, "grid": {"data.batch_size": [50, 100],
                                                        "budget": [{"iterations": 16}, {"epochs": 2}]},
            "seeds": [0, 1], "resources": {"gpus_per_trial": 0.5}}
    (tmp_path / "est.yaml").write_text(yaml.safe_dump(spec))
    return read_sweep(tmp_path / "est.yaml")


def test_each_setting_is_probed_once_and_its_trials_summed(sweep):
    rows = estimate(sweep, steps=2)
    assert [r.trials for r in rows] == [4, 4]
    assert "data.batch_size=50" in rows[0].label and "data.batch_size=100" in rows[1].label
    assert all(r.s_per_iteration > 0 and r.s_per_eval_batch > 0 for r in rows)
    # (iterations, evaluation batches) per trial; the test split's 200 images are one eval batch of 200
    # batch 50: 16 iterations (2 evals) | 2 epochs of 8 = 16 iterations (2 evals)
    # batch 100: 16 iterations (2 evals) | 2 epochs of 4 = 8 iterations (1 eval)
    budgets = {0: [(16, 2), (16, 2)], 1: [(16, 2), (8, 1)]}
    for i, r in enumerate(rows):
        expected = 2 * sum(it * r.s_per_iteration + ev * r.s_per_eval_batch for it, ev in budgets[i])
        assert r.seconds == pytest.approx(expected, rel=1e-12)
        longest = max(it * r.s_per_iteration + ev * r.s_per_eval_batch for it, ev in budgets[i])
        assert r.longest == pytest.approx(longest, rel=1e-12)


def test_report_prints_the_table_and_the_total(sweep, monkeypatch):
    import harness.estimate as est

    fixed = {50: (0.01, 0.002), 100: (0.02, 0.003)}
    monkeypatch.setattr(est, "probe", lambda cfg, device, steps=5: fixed[cfg.data.batch_size])
    lines = list(report(sweep))
    on_cpu = not torch.cuda.is_available()  # the sweep asks for 0.5 GPU per trial
    assert lines[-1].startswith("note: probed on this machine's CPU") == on_cpu
    lines = lines[:-1] if on_cpu else lines
    seconds = 2 * (16 * 0.01 + 2 * 0.002) * 2 + 2 * (16 * 0.02 + 2 * 0.003) + 2 * (8 * 0.02 + 1 * 0.003)
    assert lines[-1].startswith(f"total: {seconds / 3600:.3f} trial-hours, {seconds / 3600 * 0.5:.3f} GPU-hours")
    assert f"--time={hms((16 * 0.02 + 2 * 0.003) * SLURM_MARGIN)}" in lines[-1]
    assert len(lines) == 2 + 2 + 1 and lines[2].split()[:3] == ["0.01", "0.002", "4"]


def test_timed_averages_the_timed_calls_and_cuts_each_phase_at_its_budget(monkeypatch):
    import harness.estimate as est

    clock = {"t": 0.0, "calls": 0}

    def fn():  # each call takes 3 s of a fake clock
        clock["t"] += 3.0
        clock["calls"] += 1

    monkeypatch.setattr(est.time, "perf_counter", lambda: clock["t"])
    cpu = torch.device("cpu")
    for budget, calls in ((100.0, 7), (4.0, 4), (1.0, 2)):  # 2 warm-up + 5 timed; cut after the call past
        clock["calls"] = 0                                   # 4 s; at least one call per phase, however slow
        assert timed(fn, steps=5, warmup=2, device=cpu, budget=budget) == 3.0
        assert clock["calls"] == calls, budget
