"""Image data sets as uint8 tensors: CIFAR folders, Parquet image tables, the embedded default.

Images are decoded once and cached as .npz (keyed by the source files' path, size and
mtime), then held as uint8 [N, C, 32, 32] tensors that can live on the GPU. Batches are
a pure function of (seed, epoch, step), so resuming mid-run and sharding across DDP
ranks both reproduce the single-process order exactly.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from harness.errors import DataError
from harness.registry import PluginError, register
from harness.storage import atomic_write

if TYPE_CHECKING:
    from harness.config import DataCfg

Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""What a data set builder returns: ((train images, train labels), (test images, test labels)), images uint8
[N, C, H, W] and labels integers [N] (numpy arrays or CPU tensors); `load` makes the Dataset (subsets, the val
split, normalisation) the same way for every data set."""


def check_arrays(arrays: Any, what: str) -> Arrays:
    """The data set contract, as a one-line PluginError: (train, test) pairs of uint8 [N, C, H, W] images and
    [N] integer labels; returned as numpy arrays."""
    try:
        (xtr, ytr), (xte, yte) = arrays
    except (TypeError, ValueError):
        raise PluginError(f"{what}: returned a {type(arrays).__name__}; expected ((train_images, train_labels), "
                          f"(test_images, test_labels))") from None
    out = []
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        x, y = np.asarray(x), np.asarray(y)
        if len(x) == 0:
            raise PluginError(f"{what}: no {split} images")
        if x.dtype != np.uint8 or x.ndim != 4:
            raise PluginError(f"{what}: {split} images are {x.dtype} {list(x.shape)}; expected uint8 [N, C, H, W]")
        if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),):
            raise PluginError(f"{what}: {split} labels are {y.dtype} {list(y.shape)}; expected integers "
                              f"[{len(x)}]")
        out.append((x, y.astype(np.int64, copy=False)))
    return out[0], out[1]


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, n: Optional[int]) -> "Split":
        return self if n is None else Split(self.images[:n], self.labels[:n])


@dataclass
class Dataset:
    name: str
    train: Split
    val: Optional[Split]
    test: Split
    num_classes: int
    mean: torch.Tensor  # float32 [C], in uint8 units
    std: torch.Tensor

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float32, per-channel standardised with the train statistics."""
        mean = self.mean.to(x.device).view(1, -1, 1, 1)
        std = self.std.to(x.device).view(1, -1, 1, 1)
        return (x.float() - mean) / std

    def to(self, device) -> "Dataset":
        return Dataset(self.name, self.train.to(device), self.val.to(device) if self.val else None,
                       self.test.to(device), self.num_classes, self.mean.to(device), self.std.to(device))


def shared_cifar() -> Path:
    """Real CIFAR-10 as Parquet for the tests and benchmarks: $HEURBENCH_CIFAR, else the workspace's
    ../shared/datasets/cifar10-jpeg beside the repository."""
    default = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg"
    return Path(os.environ.get("HEURBENCH_CIFAR", default))


def cache_dir() -> Path:
    return Path(os.environ.get("HEURBENCH_CACHE", Path.home() / ".cache" / "heurbench"))


def cached(key_files: list[Path], tag: str, decode) -> tuple[np.ndarray, np.ndarray]:
    """Decode with `decode()` once; later calls load the cached uint8 arrays."""
    h = hashlib.sha1(tag.encode())
    for f in key_files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    path = cache_dir() / f"{tag}-{h.hexdigest()[:16]}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return z["images"], z["labels"]
        except Exception:  # a damaged cache file is decoded again (and rewritten)
            pass
    images, labels = decode()

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images, labels=labels)

    atomic_write(path, write)
    return images, labels


def decode_image_column(col, source: Path) -> np.ndarray:
    """JPEG/PNG bytes (or HF {bytes, path} structs) -> uint8 [N, 3, H, W]."""
    from PIL import Image

    if len(col) == 0:
        raise DataError(f"{source}: no rows (an empty table; expected images)")
    out = []
    for i, v in enumerate(col):
        b = v["bytes"] if isinstance(v, dict) else v
        try:
            img = Image.open(io.BytesIO(b)).convert("RGB")
        except Exception as err:  # PIL raises several types for bad bytes
            raise DataError(f"{source}: row {i}: image bytes could not be decoded ({err})") from None
        out.append(np.asarray(img))
    return np.stack(out).transpose(0, 3, 1, 2).copy()


def read_parquet_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a Parquet table with 'image' and 'label' columns)")

    def decode():
        try:
            table = pq.read_table(path)
        except Exception as err:
            raise DataError(f"{path}: not a readable Parquet file ({err})") from None
        cols = set(table.column_names)
        img_col = next((c for c in ("image", "img") if c in cols), None)
        lab_col = next((c for c in ("label", "labels", "fine_label") if c in cols), None)
        if img_col is None or lab_col is None:
            raise DataError(f"{path}: expected columns 'image' and 'label', found {sorted(cols)}")
        images = decode_image_column(table.column(img_col).to_pylist(), path)
        try:
            labels = np.asarray(table.column(lab_col).to_pylist(), dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as err:
            raise DataError(f"{path}: column {lab_col!r} must hold integer class labels ({err})") from None
        return images, labels

    return cached([path], "parquet", decode)


def read_parquet_folder(root: Path) -> Arrays:
    """train.parquet and test.parquet under data.root."""
    return read_parquet_split(root / "train.parquet"), read_parquet_split(root / "test.parquet")


class CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: dicts, lists, str/bytes, numbers and numpy arrays (through the
    numpy globals their pickles name). Any other global (a `__reduce__` payload: os.system, open, ...) is
    refused before it is called, so opening a crafted batch runs no code."""
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, 'latin1')
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch holds only plain values and "
                                         f"numpy arrays, and loading this could run code")
        return super().find_class(module, name)


def read_cifar_batch(p: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle batch: uint8 images [N, 3, 32, 32] and int64 labels [N] (keys str or bytes)."""
    try:
        with open(p, "rb") as fh:
            d = CifarUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DataError(f"{p}: not a CIFAR pickle batch ({' '.join(str(err).split())})") from None
    except Exception as err:  # truncated or garbage pickles raise many types (EOFError, ValueError, KeyError, ...)
        raise DataError(f"{p}: not a CIFAR pickle batch (unreadable: {type(err).__name__}: "
                        f"{' '.join(str(err).split())[:200]})") from None
    if not isinstance(d, dict):
        raise DataError(f"{p}: not a CIFAR pickle batch (holds a {type(d).__name__}, expected a dict)")

    def get(k):
        for kk in (k, k.encode()):
            if kk in d:
                return d[kk]
        raise DataError(f"{p}: not a CIFAR pickle batch (no {k!r} key; it has {sorted(map(str, d))[:8]})")

    try:
        x = np.asarray(get("data"), dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(get(key), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(f"{p}: not a CIFAR pickle batch ({' '.join(str(err).split())[:200]})") from None
    if len(x) != len(y):
        raise DataError(f"{p}: not a CIFAR pickle batch ({len(x)} images but {len(y)} labels)")
    return x, y


def read_cifar_folder(root: Path, name: str) -> Arrays:
    """torchvision's cifar-10-batches-py / cifar-100-python pickles (root or its parent), read with
    `CifarUnpickler` (no code from the files runs)."""
    sub, train_files, test_files, key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
    }[name]
    folder = root if root.name == sub else root / sub

    def load(files):
        xs, ys = [], []
        for f in files:
            p = folder / f
            if not p.is_file():
                raise DataError(f"{p}: no such file (expected torchvision's {sub} folder under data.root)")
            x, y = read_cifar_batch(p, key)
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    return load(train_files), load(test_files)


def read_digits() -> Arrays:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 scans), as 32x32 RGB."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) * (255.0 / 16.0)
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).clamp(0, 255).round().to(torch.uint8)
    x = x.expand(-1, 3, -1, -1).numpy().copy()
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    n_test = 360
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


@register.dataset("cifar10")
def cifar10(cfg: DataCfg) -> Arrays:
    return read_cifar_folder(Path(cfg.root), "cifar10")


@register.dataset("cifar100")
def cifar100(cfg: DataCfg) -> Arrays:
    return read_cifar_folder(Path(cfg.root), "cifar100")


@register.dataset("parquet")
def parquet(cfg: DataCfg) -> Arrays:
    return read_parquet_folder(Path(cfg.root))


@register.dataset("digits")
def digits(cfg: DataCfg) -> Arrays:
    return read_digits()


CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}  # data sets whose class count is known


def check_labels(cfg: DataCfg, ytr: np.ndarray, yte: np.ndarray) -> int:
    """The number of classes, after refusing labels that cannot be meant: empty splits, negative labels, labels
    past a known data set's classes (CIFAR-10/100, digits), and (Parquet) labels with classes missing below the
    largest, e.g. a stray 57 among 0..9, which would silently build a 58-class model."""
    where = f"data {cfg.name!r} at {cfg.root}" if cfg.root else f"data {cfg.name!r}"
    for split, y in (("train", ytr), ("test", yte)):
        if len(y) == 0:
            raise DataError(f"{where}: the {split} split has no images")
        if y.min() < 0:
            raise DataError(f"{where}: {split} label {int(y.min())} is negative (labels are 0..classes-1)")
    known = CLASSES.get(cfg.name)
    if known is None:  # as many classes as the largest label says, provided every class below it has images
        present = np.unique(np.concatenate([ytr, yte]))
        known = int(present[-1]) + 1
        if len(present) != known:
            missing = sorted(set(range(known)) - set(present.tolist()))
            raise DataError(f"{where}: labels run to {known - 1} but {len(missing)} classes in between have no "
                            f"images (e.g. {missing[:5]}); labels must be 0..classes-1 (a stray label "
                            f"{known - 1}?)")
    for split, y in (("train", ytr), ("test", yte)):
        if y.max() >= known:
            raise DataError(f"{where}: {split} label {int(y.max())} is out of range for {known} classes "
                            f"(labels are 0..{known - 1})")
    return known


def load(spec: DataCfg | dict) -> Dataset:
    """The public entry point (analysis uses it too): a Dataset from a data spec."""
    from harness.config import DataCfg  # a mapping spec (analysis) is checked like a trial's data section

    cfg = spec if isinstance(spec, DataCfg) else DataCfg.model_validate(spec)
    entry = register.get("dataset", cfg.name)
    (xtr, ytr), (xte, yte) = check_arrays(entry.obj(cfg), f"data set {entry.name!r} ({entry.module})")
    num_classes = check_labels(cfg, ytr, yte)
    train = Split(torch.from_numpy(xtr), torch.from_numpy(ytr))
    test = Split(torch.from_numpy(xte), torch.from_numpy(yte))
    for key, n, split in (("train_subset", cfg.train_subset, train), ("test_subset", cfg.test_subset, test)):
        have = len(split) - (cfg.val_size if key == "train_subset" else 0)
        if n is not None and n > have:
            raise DataError(f"data.{key} = {n}: larger than the {have} {key.split('_')[0]} images of data set "
                            f"{entry.name!r}" + (f" (after val_size = {cfg.val_size})" if have < len(split) else ""))
    test = test.head(cfg.test_subset)
    val = None
    if cfg.val_size:
        if cfg.val_size >= len(train):
            raise DataError(f"data.val_size = {cfg.val_size}: must be smaller than the {len(train)} train images")
        val = Split(train.images[-cfg.val_size:], train.labels[-cfg.val_size:])
        train = Split(train.images[:-cfg.val_size], train.labels[:-cfg.val_size])
    train = train.head(cfg.train_subset)
    xf = train.images.double()
    mean = xf.mean(dim=(0, 2, 3)).float()
    std = xf.std(dim=(0, 2, 3)).float().clamp_min(1.0)
    return Dataset(cfg.name, train, val, test, num_classes, mean, std)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of train indices for one epoch: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def augment_params(batch: int, seed: int, iteration: int, pad: int = 4):
    """Crop offsets and flip flags for a whole global batch, seeded by (seed, iteration)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * iteration + 1)
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=g)
    flips = torch.rand(batch, generator=g) < 0.5
    return offsets[0], offsets[1], flips


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Pad-`pad` random crop + horizontal flip of a uint8 batch, on whatever device it lives."""
    b, c, h, w = x.shape
    dev = x.device
    dy, dx, flip = dy.to(dev), dx.to(dev), flip.to(dev)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = dx[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return xp[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]


@dataclass
class Epoch:
    """One epoch's batches, planned at its start on the data's device: the index order and every step's
    crop offsets and flips, drawn on the host from (seed, iteration) and copied over once, so that a
    training step never waits on a host-to-device copy (each one stalls until the GPU's queue drains)."""
    order: torch.Tensor  # [n] int64
    batch_size: int  # global
    aug: Optional[torch.Tensor]  # [steps, 3, batch_size] int64: dy, dx, flip; None without augmentation


def plan_epoch(data: Dataset, seed: int, epoch: int, spe: int, batch_size: int, augment: bool) -> Epoch:
    """Epoch `epoch` (of `spe` steps) of a trial with this seed, for `train_batch`."""
    dev = data.train.images.device
    order = epoch_order(len(data.train), seed, epoch).to(dev)
    if not augment:
        return Epoch(order, batch_size, None)
    aug = torch.stack([torch.stack([dy, dx, flip.long()]) for dy, dx, flip in
                       (augment_params(batch_size, seed, epoch * spe + s) for s in range(spe))])
    return Epoch(order, batch_size, aug.to(dev))


def batch_indices(plan: Epoch, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor,
                                                                              Optional[torch.Tensor]]:
    """This rank's contiguous shard of global batch `step`: train indices [b] and crop/flip [3, b] (or None)."""
    per = plan.batch_size // world
    lo = step * plan.batch_size + rank * per
    aug = None if plan.aug is None else plan.aug[step, :, rank * per:(rank + 1) * per]
    return plan.order[lo:lo + per], aug


def gather(data: Dataset, idx: torch.Tensor, aug: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Train images `idx`, cropped and flipped by `aug` (see `batch_indices`), normalised; and their labels."""
    x = data.train.images[idx]
    if aug is not None:
        x = crop_flip(x, aug[0], aug[1], aug[2].bool())
    return data.normalize(x), data.train.labels[idx]


def train_batch(data: Dataset, plan: Epoch, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """This rank's contiguous shard of global batch `step` of the planned epoch, augmented, normalised."""
    return gather(data, *batch_indices(plan, step, rank, world))
