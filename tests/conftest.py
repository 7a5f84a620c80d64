"""Shared fixtures: the real CIFAR-10 Parquet files in ../shared, small trial configs, one Ray cluster."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from harness.data import shared_cifar

CIFAR = shared_cifar()

BASE_TRIAL = {
    "name": "t",
    "seed": 0,
    "model": {"name": "student_cnn", "init": "default", "width": 0.25},
    "data": {"name": "parquet", "root": str(CIFAR), "train_subset": 400, "test_subset": 200, "batch_size": 50,
             "eval_batch_size": 200},
    "optim": {"name": "sgd", "lr": 0.02, "momentum": 0.9},
    "budget": {"iterations": 16},
    "eval": {"every": 8, "unit": "iteration", "train_stride": 2, "log_every": 8},
}


@pytest.fixture
def trial_dict():
    """A fresh copy of a tiny, fast trial (student CNN at width 1/4, 400 real CIFAR-10 images)."""
    if not (CIFAR / "train.parquet").is_file():
        pytest.fail(f"{CIFAR}: CIFAR-10 Parquet not found (expected ../shared beside the repo)")
    return copy.deepcopy(BASE_TRIAL)


@pytest.fixture(autouse=True)
def _threads():
    """2 intra-op threads (fewer on a 1-core machine) in every pytest-xdist worker too: the trials that tests
    start as subprocesses use torch's default (one per core), and equivalence tests compare their numbers with
    in-process runs, which a different thread count would sum in another order."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """Hundreds of tiny steps: intra-op threads only add synchronisation, and stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_address():
    """One real local Ray cluster (2 CPUs, on 127.0.0.1 as the driver starts it) for the whole test session;
    sweep drivers join it with --address."""
    import ray

    from harness.tune_driver import init_ray

    init_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def pytest_collection_modifyitems(items):
    """The longest tests first (the quickstart, then every slow one), so that pytest-xdist's workers share them
    out from the start instead of one worker running a long test alone at the end."""
    items.sort(key=lambda item: 0 if "test_quickstart" in item.nodeid else 1 if item.get_closest_marker("slow") else 2)
