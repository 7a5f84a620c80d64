"""Training throughput: a plain PyTorch recipe vs heurbench's own training path, in one run.

    python bench/throughput.py                      # whatever device there is (CPU mode runs anywhere)
    python bench/throughput.py --models vgg16 --batches 100 5000 --iters 200 --pack 8

Plain recipe: torchvision Dataset + DataLoader workers + CPU transforms, fp32.
heurbench: `harness.train.run_trial` itself (GPU-resident uint8 data, augmentation on
the device, bf16 autocast + channels_last + torch.compile on CUDA); its images/s is read
from the step rows it writes to Parquet (each covers the iterations since the previous row; the
median after the first quarter, so compilation and warm-up are left out), so the number is the
real loop's steady state. Packing: N bs-100 trials one at a time (a single trial's rate), as N
processes sharing the device (what Ray Tune does with fractional GPUs) and stacked in one process
(`resources.pack`, harness/pack.py); aggregate images/s. A row that fails prints one line and the
rest go on. Prints a table and writes it as CSV.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def matmul_peak(device: torch.device, seconds: float = 1.0) -> float:
    """Measured dense matmul TFLOP/s (bf16 on CUDA, fp32 on CPU), over `seconds` after a warm-up."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(10):
            a @ b
        sync(device)
        reps += 10
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_flops_per_image(name: str) -> float:
    """Forward + backward FLOPs of one image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.models import build

    model = build({"name": name, "num_classes": 10})
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return fc.get_total_flops() / 2


def plain_recipe(name: str, batch: int, iters: int, device: torch.device, workers: int) -> dict:
    """The textbook loop: PIL images through torchvision transforms in DataLoader workers, fp32."""
    import torchvision.transforms as T
    from PIL import Image

    from harness import data
    from harness.models import build

    ds = data.load({"name": "parquet", "root": str(data.shared_cifar()), "train_subset": max(batch * 4, 5000)})
    imgs = ds.train.images.permute(0, 2, 3, 1).numpy()
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))])

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(imgs)

        def __getitem__(self, i):
            return tf(Image.fromarray(imgs[i])), int(ds.train.labels[i])

    loader = torch.utils.data.DataLoader(Images(), batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build({"name": name, "num_classes": 10}).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    done, warm, t0 = 0, min(5, iters // 4), 0.0
    while done < iters:
        for x, y in loader:
            if done == warm:
                sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == iters:
                break
    sync(device)
    return {"images_per_s": (iters - warm) * batch / (time.perf_counter() - t0), "peak_mem_gib": peak_gib(device)}


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def bench_cfg(name: str, batch: int, iters: int, device: torch.device, seed: int = 0):
    """heurbench's fast path for this device: bf16 + channels_last + torch.compile (CUDA graphs at small batch)."""
    from harness.config import parse_trial
    from harness.data import shared_cifar

    cuda = device.type == "cuda"
    return parse_trial({
        "name": f"bench-{name}-{batch}", "seed": seed, "model": {"name": name},
        "data": {"name": "parquet", "root": str(shared_cifar()), "train_subset": max(batch * 4, 5000), "test_subset": 1000,
                 "batch_size": batch},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "budget": {"iterations": iters},
        "eval": {"every": iters, "unit": "iteration", "train_stride": max(1, iters // 10), "log_every": iters},
        "checkpoints": {"iterations": [], "final": False},
        "perf": {"device": device.type, "bf16": cuda, "channels_last": cuda,
                 "compile": ("reduce-overhead" if batch <= 512 else "default") if cuda else False},
    })


def steady_rate(out: str, iters: int) -> float:
    """Median per-trial images/s of the step rows after the first quarter (compilation, warm-up)."""
    import pandas as pd

    from harness.layout import RunDir

    df = pd.read_parquet(RunDir(out).metrics)
    steady = df[(df.kind == "step") & (df.iteration > iters // 4)]
    return float(steady.groupby("trial_id").images_per_s.median().sum())


def heurbench_trial(name: str, batch: int, iters: int, device: torch.device, out: str, seed: int = 0) -> dict:
    """Run the real trial loop; steady-state images/s from its step rows, peak memory."""
    from harness.train import run_trial

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_trial(bench_cfg(name, batch, iters, device, seed), out)
    return {"images_per_s": steady_rate(out, iters), "peak_mem_gib": peak_gib(device)}


def attempt(what: str, fn, *args):
    """fn(*args), or None after printing one line naming what failed: one failed row keeps the table."""
    try:
        return fn(*args)
    except Exception as err:  # a benchmark row may fail on a new device or library; report it, go on
        print(f"{what}: failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", flush=True)
        return None


def _packed_worker(args):
    name, iters, device, out, seed = args
    return heurbench_trial(name, 100, iters, torch.device(device), out, seed)["images_per_s"]


def packed(name: str, n: int, iters: int, device: torch.device, alone: float) -> dict[str, float]:
    """Steady aggregate images/s of n bs-100 trials: one at a time (`alone`, a single trial's rate), as n
    processes sharing the device (Ray's fractional GPUs), and stacked in one process (resources.pack)."""
    from harness.train import run_pack

    def processes(tmp):
        jobs = [(name, iters, str(device), f"{tmp}/p{i}", i) for i in range(n)]
        with mp.get_context("spawn").Pool(n) as pool:
            pool.map(_packed_worker, jobs)
        return sum(steady_rate(j[3], iters) for j in jobs)

    def stacked(tmp):
        run_pack([bench_cfg(name, 100, iters, device, seed=i) for i in range(n)], f"{tmp}/stack")
        return steady_rate(f"{tmp}/stack", iters)

    out = {f"{n} trials one at a time": alone}
    with tempfile.TemporaryDirectory() as tmp:
        for label, fn in ((f"{n} trials as {n} processes", processes), (f"{n} trials stacked (pack)", stacked)):
            out[label] = attempt(label, fn, tmp)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--batches", nargs="+", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None, help="iterations at batch 100 (larger batches: the same "
                    "images, at least 20 iterations)")
    ap.add_argument("--pack", type=int, default=None, help="trials packed on one device (0 = skip)")
    ap.add_argument("--csv", default="runs/bench/throughput.csv")
    a = ap.parse_args()
    device = torch.device(a.device)
    cpu = device.type == "cpu"
    models = a.models or (["vgg11"] if cpu else ["vgg11", "vgg16", "resnet18"])
    batches = a.batches or ([100] if cpu else [100, 5000])
    iters = a.iters or (20 if cpu else 200)
    pack = a.pack if a.pack is not None else (2 if cpu else 8)
    workers = min(8, os.cpu_count() or 1)
    peak = matmul_peak(device)
    print(f"device {device} ({torch.cuda.get_device_name() if not cpu else f'{os.cpu_count()} CPU cores'}), "
          f"measured matmul peak {peak:.2f} TFLOP/s ({'bf16' if not cpu else 'fp32'})")
    rows, failed = [], {"images_per_s": float("nan"), "peak_mem_gib": float("nan")}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            fpi = train_flops_per_image(name)
            for bs in batches:
                n = max(20, iters * 100 // bs)
                plain = attempt(f"{name} bs {bs} plain", plain_recipe, name, bs, n, device, workers) or failed
                hb = attempt(f"{name} bs {bs} heurbench", heurbench_trial, name, bs, n, device,
                             f"{tmp}/{name}-{bs}") or failed
                for path, r in (("plain", plain), ("heurbench", hb)):
                    ips, mem = r["images_per_s"], r["peak_mem_gib"]
                    tf, x = ips * fpi / 1e12, ips / plain["images_per_s"]
                    rows.append(dict(model=name, batch=bs, path=path, images_per_s=ips, tflops=tf,
                                     frac_peak=tf / peak, peak_mem_gib=mem, speedup=x))
                    print(f"{name:9s} bs {bs:5d} {path:9s} {ips:10.0f} img/s {tf:8.3f} TFLOP/s "
                          f"{100 * tf / peak:6.2f}% of peak  x{x:.2f} vs plain  mem {mem:.2f} GiB", flush=True)
        if pack:
            name = "vgg16" if not cpu else models[0]

            def rate(path):
                return next((r["images_per_s"] for r in rows if (r["model"], r["batch"], r["path"]) ==
                             (name, 100, path)), None)

            single_plain = rate("plain") or (attempt("plain", plain_recipe, name, 100, iters, device, workers)
                                             or failed)["images_per_s"]
            alone = rate("heurbench") or (attempt("heurbench", heurbench_trial, name, 100, iters, device,
                                                  f"{tmp}/alone") or failed)["images_per_s"]
            for path, v in packed(name, pack, iters, device, alone).items():
                v = float("nan") if v is None else v
                rows.append(dict(model=name, batch=100, path=path, images_per_s=v, speedup=v / single_plain))
                print(f"{name:9s} bs   100 {path}: {v:10.0f} img/s aggregate, x{v / single_plain:.2f} vs plain "
                      f"single trial", flush=True)
    import pandas as pd

    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(a.csv, index=False)
    print(f"table: {a.csv}")


if __name__ == "__main__":
    main()
