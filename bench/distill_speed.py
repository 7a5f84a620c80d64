"""Distillation's teacher cost on the CPU: the teacher's logits cached once per train image vs the teacher run on
every batch, for a student distilled on N real CIFAR-10 images (data.augment false), in heurbench's real loop.

Both variants are the same trial (`run_trial`); the per-batch one has `harness.distill.cacheable` patched off, so
its teacher runs on each batch as with augmentation. Training images/s is the median of the step rows after the
first quarter (bench/throughput.py's `steady_rate`); the wall time is the whole run (after a one-batch warm-up
run), the cached variant's one teacher pass over the train set included. Prints both, their ratio and the largest difference between the two
runs' per-iteration losses. --augment times the augmented trial instead (the per-batch path only).
The teacher is an untrained model of the S4 teacher's spec (sweeps/s4_teacher.yaml): its weights do not change
the time. Usage: python bench/distill_speed.py [--n 1000] [--epochs 3] [--batch 100] [--threads 2] [--augment]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import steady_rate  # noqa: E402

from harness import distill  # noqa: E402
from harness.config import parse_trial  # noqa: E402
from harness.data import shared_cifar  # noqa: E402
from harness.layout import RunDir  # noqa: E402
from harness.models import build  # noqa: E402
from harness.train import run_trial  # noqa: E402

TEACHER = {"name": "vgg16", "bn": False, "dropout": 0.5, "num_classes": 10, "in_channels": 3}


def student_cfg(teacher: Path, n: int, epochs: int, batch: int, augment: bool):
    """The S4 student (student_cnn, SGD as sweeps/s4_distill.yaml) distilled at T = 5 on the first n images."""
    return parse_trial({
        "name": "distill-speed", "seed": 0, "model": {"name": "student_cnn"},
        "data": {"name": "parquet", "root": str(shared_cifar()), "train_subset": n, "test_subset": 100,
                 "batch_size": batch, "eval_batch_size": 500, "augment": augment},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
        "distill": {"teacher": str(teacher), "temperature": 5.0, "weight": 1.0},
        "budget": {"epochs": epochs},
        "eval": {"every": epochs, "unit": "epoch", "train_stride": 1, "log_every": 10 ** 6},
        "checkpoints": {"iterations": [], "final": False},
        "perf": {"device": "cpu"},
    })


def timed(cfg, out: Path) -> tuple[float, float, "object"]:
    """(steady training images/s, wall seconds of the whole run, the step rows' losses by iteration)."""
    import pandas as pd

    t = time.perf_counter()
    assert run_trial(cfg, out) == "done"
    wall = time.perf_counter() - t
    steps = pd.read_parquet(RunDir(out).metrics).query("kind == 'step'").set_index("iteration").loss.sort_index()
    return steady_rate(str(out), len(steps)), wall, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="train images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--augment", action="store_true", help="time the augmented trial (teacher on every batch)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher.pt"
        torch.manual_seed(0)
        torch.save({"model": build(TEACHER).state_dict(), "model_spec": TEACHER}, teacher)
        timed(student_cfg(teacher, a.batch, 1, a.batch, a.augment), Path(tmp) / "warm-up")  # first-run imports
        cfg = student_cfg(teacher, a.n, a.epochs, a.batch, a.augment)
        print(f"student_cnn <- vgg16 teacher, {a.n} CIFAR-10 images x {a.epochs} epochs, batch {a.batch}, "
              f"augment {a.augment}, {a.threads} threads, torch {torch.__version__}")
        if a.augment:
            rate, wall, _ = timed(cfg, Path(tmp) / "augmented")
            print(f"per-batch teacher (augmented): {rate:.1f} img/s training, {wall:.1f} s wall")
            return
        rate_c, wall_c, loss_c = timed(cfg, Path(tmp) / "cached")
        distill.cacheable = lambda cfg: False
        rate_b, wall_b, loss_b = timed(cfg, Path(tmp) / "per_batch")
    print(f"cached teacher logits: {rate_c:.1f} img/s training, {wall_c:.1f} s wall (one teacher pass included)")
    print(f"per-batch teacher:     {rate_b:.1f} img/s training, {wall_b:.1f} s wall")
    print(f"ratio cached / per-batch: {rate_c / rate_b:.2f}x img/s, {wall_b / wall_c:.2f}x wall")
    print(f"max |loss difference| over {len(loss_c)} iterations: {(loss_c - loss_b).abs().max():.3g} "
          f"(final losses {loss_c.iloc[-1]:.6f} vs {loss_b.iloc[-1]:.6f})")


if __name__ == "__main__":
    main()
