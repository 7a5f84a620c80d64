"""DDP equivalence on CPU with real gloo: the same global batch on 1 process and on 2 ranks (torchrun, and
Ray Train's TorchTrainer) gives the same loss trajectory; with batch norm, only when it is synchronised.

Tolerance: 1e-5 relative on every logged loss over 16 SGD steps of the student CNN (no BN, no dropout).
The two runs differ only in float32 summation order (gradients all-reduced as a mean of two half-batch
means), measured at <= ~2e-7; chaotic growth makes the gap reach 1e-4 after ~24 steps at this LR.
"""
import copy
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.config import parse_trial
from harness.runner import run_point
from harness.train import run_trial

RTOL = 1e-5
KEY = ["kind", "split", "iteration"]


@pytest.fixture
def cfg(trial_dict):
    trial_dict.update(budget={"iterations": 16}, eval={"every": 8, "unit": "iteration", "train_stride": 1,
                                                       "log_every": 8})
    return parse_trial(trial_dict)


def metrics(out):
    return pd.read_parquet(out / "metrics").sort_values(KEY).reset_index(drop=True)


def assert_same_trajectory(one: pd.DataFrame, two: pd.DataFrame) -> None:
    assert (one.world_size == 1).all() and (two.world_size == 2).all()
    assert one[KEY].equals(two[KEY]) and len(one[one.kind == "step"]) == 16
    rel = (one.loss - two.loss).abs() / one.loss.abs()
    print(f"max abs loss diff {(one.loss - two.loss).abs().max():.3g}, max rel {rel.max():.3g}")
    assert rel.max() < RTOL
    assert np.allclose(one.accuracy.fillna(-1), two.accuracy.fillna(-1), atol=1e-9)
    assert np.allclose(one.weight_norm, two.weight_norm, rtol=RTOL)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(cfg, tmp_path):
    assert run_trial(cfg, tmp_path / "one") == "done"
    assert run_point(cfg, tmp_path / "two", workers=2) == "done"  # torch.distributed.run, gloo
    assert_same_trajectory(metrics(tmp_path / "one"), metrics(tmp_path / "two"))


@pytest.mark.slow
def test_ray_train_torchtrainer_two_workers_match_one_process(cfg, tmp_path, ray_address):
    """On the session's Ray cluster (2 CPUs, one per worker)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    assert run_trial(cfg, tmp_path / "one") == "done"
    out = tmp_path / "two"
    TorchTrainer(lambda: run_trial(cfg, out), scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(storage_path=str(tmp_path / "ray"), name="ddp")).fit()
    assert_same_trajectory(metrics(tmp_path / "one"), metrics(out))


def bn_trial(trial_dict, bn):
    trial_dict.update(model={"name": "vgg11", "bn": bn, "width": 0.25}, budget={"iterations": 4},
                      eval={"every": 4, "unit": "iteration", "train_stride": 1, "log_every": 4})
    trial_dict["data"]["augment"] = False
    return parse_trial(trial_dict)


@pytest.mark.slow
def test_synchronised_bn_two_ranks_match_one_process_and_per_rank_bn_does_not(trial_dict, tmp_path):
    """VGG-11 with BN, global batch 50: with `bn: sync` 2 gloo ranks normalise over the whole batch as 1 process
    does (the iteration-0 loss to 1e-6, the next steps and the test loss with the running statistics to 1e-5);
    with per-rank BN (`bn: true`) each rank normalises its 25 images and the iteration-0 loss differs."""
    sync, per_rank = bn_trial(trial_dict, "sync"), bn_trial(copy.deepcopy(trial_dict), True)
    assert run_trial(sync, tmp_path / "one") == "done"
    assert run_point(sync, tmp_path / "sync", workers=2) == "done"
    assert run_point(per_rank, tmp_path / "rank", workers=2) == "done"
    one, two, rank = (metrics(tmp_path / n) for n in ("one", "sync", "rank"))
    first = lambda m: m[(m.kind == "step") & (m.iteration == 0)].loss.item()
    print(f"iteration-0 loss: one process {first(one):.8f}, 2 ranks sync {first(two):.8f}, per rank {first(rank):.8f}")
    assert abs(first(two) - first(one)) <= 1e-6 * first(one)
    assert abs(first(rank) - first(one)) > 1e-4 * first(one)
    assert one[KEY].equals(two[KEY])
    assert np.allclose(one.loss, two.loss, rtol=RTOL)
    assert (one.bn_batch == 50).all() and (two.bn_batch == 50).all() and (rank.bn_batch == 25).all()


@pytest.mark.slow
def test_bn_batch_is_nan_for_a_model_without_bn(cfg, tmp_path):
    assert run_trial(cfg, tmp_path) == "done"
    assert metrics(tmp_path).bn_batch.isna().all()


@pytest.mark.slow
def test_ranks_die_with_a_killed_torchrun_agent(trial_dict, tmp_path):
    """SIGKILL to torchrun's agent mid-trial (as when Ray ends a dead driver's trial actor and its children):
    both ranks end within seconds instead of training on, or spinning, as orphans."""
    import signal
    import subprocess
    import sys
    import time

    from harness.config import dump

    def running(pid):  # (an orphan is reaped by init; a zombie has ended)
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"

    trial_dict.update(budget={"iterations": 100000})
    (tmp_path / "t.yaml").write_text(dump(parse_trial(trial_dict)))
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                              "-m", "harness.runner", str(tmp_path / "t.yaml"), str(tmp_path / "out")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list((tmp_path / "out" / "metrics").glob("*/part-*")):
            time.sleep(0.5)  # both ranks are past set-up and training (rank 0 has written rows)
        ranks = [int(c) for c in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()]
        assert len(ranks) == 2, ranks
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(map(running, ranks)):
        time.sleep(0.2)
    alive = [pid for pid in ranks if running(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"{len(alive)} rank(s) outlived their agent"
