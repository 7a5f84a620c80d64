"""Speed of the analyses on the fastest device (cuda if available, else cpu).

SVCCA / linear CKA between two 512-unit layers over 10,000 inputs, in float32 and float64,
each value and time compared with a float64 numpy reference written here. Then a loss-plane
grid on real CIFAR-10 (BN recomputed at every point): seconds per point evaluating one model
at a time vs a vmapped stack of models per pass, and the largest difference between the two. Then sharpness
(top Hessian eigenvalue, Lanczos) of N checkpoints of one BN net on real CIFAR-10: seconds per checkpoint one
at a time (autograd double backward) vs all N as one stack (torch.func), and the largest relative difference.
Usage: python bench/analysis_speed.py [--points 10000] [--units 512] [--repeats 3] [--grid 4] [--ckpts 16]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis.cca import linear_cka, svcca
from analysis.evaluation import Batches, param_vector, update_bn
from analysis.landscape import Plane, evaluate_plane
from analysis.loading import build_model
from analysis.sharpness import sharpness, top_eigenvalue
from harness import data
from harness.models import build


def layers(points: int, units: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two ReLU 'layers' mixing a shared 64-dim latent with private noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((points, 64))
    x = np.maximum(z @ rng.standard_normal((64, units)) + rng.standard_normal((points, units)), 0)
    y = np.maximum(z @ rng.standard_normal((64, units)) + rng.standard_normal((points, units)), 0)
    return x, y


def np_svcca(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> float:
    def reduce(a):
        a = a - a.mean(0)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        k = int(np.argmax(np.cumsum(s**2) / np.sum(s**2) >= keep)) + 1
        return u[:, :k] * s[:k]

    qx, qy = np.linalg.qr(reduce(x))[0], np.linalg.qr(reduce(y))[0]
    return float(np.linalg.svd(qx.T @ qy, compute_uv=False).mean())


def np_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def timed(fn, repeats: int, sync) -> tuple[float, float]:
    """(value, best seconds of `repeats` runs after one warm-up)."""
    value = fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        value = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return value, best


def plane_speed(device: torch.device, grid: int, stack: int) -> None:
    """A grid x grid plane through three perturbed VGG-16-BN (width 1/4 on CPU) weight vectors."""
    cuda = device.type == "cuda"
    n = 5000 if cuda else 500
    ds = data.load({"name": "parquet", "root": str(data.shared_cifar()), "train_subset": n, "test_subset": n})
    model = build({"name": "vgg16", "bn": True, "width": 1.0 if cuda else 0.25, "num_classes": 10}).to(device)
    train = Batches(ds.train.images, ds.train.labels, 1000 if cuda else 250, ds.normalize)
    test = Batches(ds.test.images, ds.test.labels, 1000 if cuda else 250, ds.normalize)
    g = torch.Generator().manual_seed(0)
    w0 = param_vector(model)
    w1, w2 = (w0 + 0.05 * torch.randn(w0.shape, generator=g).to(w0) * w0.abs().mean() for _ in range(2))
    plane, axis = Plane.through(w0, w1, w2), torch.linspace(-0.5, 1.5, grid).tolist()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"plane: {grid}x{grid} points, {model.__class__.__name__} {'width 1' if cuda else 'width 1/4'}, "
          f"{n} BN + {n} test images per point")
    rows = {}
    for per_pass in (1, stack):
        rows[per_pass], seconds = timed(
            lambda: evaluate_plane(model, plane, axis, axis, {"test": test}, train, stack=per_pass), 1, sync)
        diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(rows[per_pass], rows[1]))
        print(f"{'plane':8} {f'{per_pass} model(s) per pass':22} {seconds / grid**2:10.4f} s/point "
              f"max |loss diff| vs 1 per pass {diff:.2e}")


def sharpness_speed(device: torch.device, n_ckpts: int, images: int, iters: int, bn: str) -> None:
    """`n_ckpts` ResNet-18 (width 1/8 on CUDA, 1/16 on CPU) checkpoints, each its own seed's initial weights."""
    cuda = device.type == "cuda"
    spec = {"name": "resnet18", "width": 0.125 if cuda else 0.0625, "num_classes": 10}
    ds = data.load({"name": "parquet", "root": str(data.shared_cifar()), "train_subset": images, "test_subset": 1})
    train = Batches(ds.train.images, ds.train.labels, 500, ds.normalize)
    ckpts = {}
    for seed in range(n_ckpts):
        torch.manual_seed(seed)
        ckpts[f"t{seed}/last"] = {"model": build(spec).state_dict(), "model_spec": spec}
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def one_at_a_time() -> list[float]:
        values = []
        for ckpt_id, ckpt in ckpts.items():
            model = build_model(ckpt, ckpt_id, device)
            if bn == "running":
                update_bn(model, train)
            values.append(top_eigenvalue(model, train, iters=iters, bn=bn))
        return values

    print(f"sharpness: {n_ckpts} checkpoints, ResNet-18 width {spec['width']}, {images} images, bn {bn}, "
          f"Lanczos <= {iters} steps")
    def stack() -> list[float]:
        return sharpness(ckpts, train, iters=iters, device=device, bn=bn, stack=n_ckpts).top_eigenvalue.tolist()

    seconds, values = {}, {}
    for name, fn in (("1 checkpoint per pass", one_at_a_time), (f"{n_ckpts} per pass (stack)", stack)):
        sync()
        start = time.perf_counter()  # one run each: a warm-up would double the bench's longest part
        values[name] = fn()
        sync()
        seconds[name] = time.perf_counter() - start
        ref, first = values[next(iter(values))], seconds[next(iter(seconds))]
        diff = max(abs(a - b) / abs(b) for a, b in zip(values[name], ref))
        print(f"{'sharpness':10} {name:22} {seconds[name] / n_ckpts:10.4f} s/checkpoint "
              f"{first / seconds[name]:6.2f}x, max relative eigenvalue diff vs 1 per pass {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--grid", type=int, default=4, help="plane grid points per axis (0 = skip the plane)")
    ap.add_argument("--stack", type=int, default=8, help="models per pass in the stacked plane evaluation")
    ap.add_argument("--ckpts", type=int, default=16, help="checkpoints in the sharpness comparison (0 = skip it)")
    ap.add_argument("--images", type=int, default=100, help="training images in the sharpness loss")
    ap.add_argument("--iters", type=int, default=20, help="Lanczos steps at most per checkpoint")
    ap.add_argument("--bn", default="batch", choices=["running", "batch"], help="BN mode of the sharpness loss")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x, y = layers(args.points, args.units)
    tx, ty = torch.from_numpy(x).float().to(device), torch.from_numpy(y).float().to(device)
    print(f"{args.points} inputs x {args.units} units; torch {torch.__version__} on {device}"
          f" ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print(f"{'measure':8} {'backend':22} {'value':>10} {'seconds':>9} {'max |diff|':>11}")
    for name, ours, ref in (("svcca", svcca, np_svcca), ("cka", linear_cka, np_cka)):
        expected, seconds = timed(lambda: ref(x, y), args.repeats, lambda: None)
        print(f"{name:8} {'numpy float64 (ref)':22} {expected:10.6f} {seconds:9.3f} {'-':>11}")
        for dtype in (torch.float32, torch.float64):
            value, seconds = timed(lambda: ours(tx, ty, dtype=dtype), args.repeats, sync)
            backend = f"torch {device.type} {str(dtype).removeprefix('torch.')}"
            print(f"{name:8} {backend:22} {value:10.6f} {seconds:9.3f} {abs(value - expected):11.2e}")
    if args.grid:
        plane_speed(device, args.grid, args.stack)
    if args.ckpts:
        sharpness_speed(device, args.ckpts, args.images, args.iters, args.bn)


if __name__ == "__main__":
    main()
