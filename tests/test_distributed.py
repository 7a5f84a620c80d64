"""harness.distributed: ranks from torchrun's and srun's environments, and a real 2-process gloo group
set up from srun-style variables (what `srun -n 2` gives each task)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from harness import distributed

LAUNCH_VARS = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_STEP_ID",
               "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_STEP_NODELIST",
               "SLURM_JOB_NODELIST"]


@pytest.fixture
def env(monkeypatch):
    """A clean launcher environment; afterwards every launch variable is as before, including the
    MASTER_ADDR/PORT that env_ranks sets (monkeypatch alone does not undo keys it never saw)."""
    saved = {k: os.environ.get(k) for k in LAUNCH_VARS}
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    yield monkeypatch
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("nodelist, first", [("gpu[03-05,07],cpu1", "gpu03"), ("node7", "node7"),
                                             ("a-b[010-012]", "a-b010"), ("x1,x2", "x1")])
def test_first_slurm_host(nodelist, first):
    assert distributed.first_slurm_host(nodelist) == first


def test_no_launcher_means_one_process(env):
    assert distributed.env_ranks() == (0, 1, 0)
    env.setenv("SLURM_PROCID", "0")  # a plain sbatch job (one task) is not DDP
    env.setenv("SLURM_NTASKS", "1")
    assert distributed.env_ranks() == (0, 1, 0)


def test_torchrun_environment(env):
    env.setenv("RANK", "3")
    env.setenv("WORLD_SIZE", "4")
    env.setenv("LOCAL_RANK", "1")
    assert distributed.env_ranks() == (3, 4, 1)


def test_srun_environment_sets_the_rendezvous_from_the_step(env):
    for k, v in {"SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
                 "SLURM_JOB_ID": "1234", "SLURM_STEP_NODELIST": "gpu[07-10]"}.items():
        env.setenv(k, v)
    assert distributed.env_ranks() == (5, 8, 1)
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(20000 + 1234)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun_rank(rank: int, port: int, results) -> None:
    os.environ.update({"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_STEP_ID": "0",
                       "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "localhost", "MASTER_PORT": str(port)})
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        os.environ.pop(k, None)
    d, device = distributed.setup("cpu")
    try:
        total = distributed.all_reduce_sum(torch.tensor([float(rank + 1)]), d).item()
        flagged = distributed.first_flagged(torch.tensor(-1 if rank == 0 else 7), d)
        results.put((d.rank, d.world, d.main, total, flagged, str(device)))
    finally:
        distributed.teardown(d)


@pytest.mark.slow
def test_real_gloo_group_from_srun_variables():
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    mp.start_processes(srun_rank, args=(free_port(), results), nprocs=2, start_method="spawn")
    got = sorted(results.get(timeout=5) for _ in range(2))
    assert got == [(0, 2, True, 3.0, 7, "cpu"), (1, 2, False, 3.0, 7, "cpu")]
