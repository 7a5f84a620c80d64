"""Speed of SVCCA / linear CKA between two 512-unit layers over 10,000 inputs.

Runs analysis.cca on the fastest device (cuda if available, else cpu) in float32 and float64
and compares each value and its time with a float64 numpy reference written here.
Usage: python bench/analysis_speed.py [--points 10000] [--units 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis.cca import linear_cka, svcca


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
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


if __name__ == "__main__":
    main()
