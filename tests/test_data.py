import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import CIFAR
from harness import data
from harness.errors import DataError


@pytest.fixture(scope="module")
def cifar():
    return data.load({"name": "parquet", "root": str(CIFAR), "train_subset": 1000, "test_subset": 300})


def test_parquet_cifar_decodes_to_uint8_with_balanced_prefix(cifar):
    assert cifar.train.images.shape == (1000, 3, 32, 32) and cifar.train.images.dtype == torch.uint8
    assert cifar.num_classes == 10 and len(cifar.test) == 300
    counts = torch.bincount(cifar.train.labels, minlength=10)
    assert counts.min() >= 80  # rows are pre-shuffled, so a prefix is roughly balanced
    x = cifar.normalize(cifar.train.images)
    assert x.dtype == torch.float32 and abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_decode_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("HEURBENCH_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "ds"
    src.mkdir()
    table = pq.read_table(CIFAR / "test.parquet").slice(0, 50)
    pq.write_table(table, src / "train.parquet")
    pq.write_table(table.slice(0, 20), src / "test.parquet")
    a = data.load({"name": "parquet", "root": str(src)})
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    b = data.load({"name": "parquet", "root": str(src)})
    assert torch.equal(a.train.images, b.train.images) and len(a.test) == 20


def test_hugging_face_struct_column_and_val_split(tmp_path, monkeypatch):
    monkeypatch.setenv("HEURBENCH_CACHE", str(tmp_path / "cache"))
    t = pq.read_table(CIFAR / "test.parquet").slice(0, 40)
    structs = [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(t.column("image").to_pylist())]
    hf = pa.table({"img": structs, "label": t.column("label")})
    for f in ("train.parquet", "test.parquet"):
        pq.write_table(hf, tmp_path / f)
    ds = data.load({"name": "parquet", "root": str(tmp_path), "val_size": 10})
    assert len(ds.train) == 30 and len(ds.val) == 10
    (tmp_path / "plain").mkdir()
    for f in ("train.parquet", "test.parquet"):
        pq.write_table(t, tmp_path / "plain" / f)
    plain = data.load({"name": "parquet", "root": str(tmp_path / "plain")})
    assert torch.equal(ds.test.images, plain.test.images)


def test_missing_and_corrupt_files_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HEURBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="train.parquet: no such file"):
        data.load({"name": "parquet", "root": str(tmp_path)})
    (tmp_path / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="train.parquet: not a readable Parquet file"):
        data.load({"name": "parquet", "root": str(tmp_path)})
    pq.write_table(pa.table({"image": [b"\xff\xd8 broken jpeg"], "label": [1]}), tmp_path / "train.parquet")
    with pytest.raises(DataError, match="row 0: image bytes could not be decoded"):
        data.load({"name": "parquet", "root": str(tmp_path)})
    pq.write_table(pa.table({"pixels": [b"x"], "label": [1]}), tmp_path / "train.parquet")
    with pytest.raises(DataError, match="expected columns 'image' and 'label'"):
        data.load({"name": "parquet", "root": str(tmp_path)})


def test_torchvision_cifar10_folder(tmp_path, cifar, monkeypatch):
    monkeypatch.setenv("HEURBENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x = cifar.train.images.numpy()
    y = cifar.train.labels.numpy()
    for i in range(1, 6):
        sl = slice((i - 1) * 100, i * 100)
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"data": x[sl].reshape(100, -1), "labels": y[sl].tolist()}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": x[500:600].reshape(100, -1), "labels": y[500:600].tolist()}, fh)
    for root in (tmp_path, folder):
        ds = data.load({"name": "cifar10", "root": str(root)})
        assert torch.equal(ds.train.images, cifar.train.images[:500])
        assert torch.equal(ds.test.labels, cifar.train.labels[500:600])
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3: not a CIFAR pickle batch"):
        data.load({"name": "cifar10", "root": str(tmp_path)})
    with pytest.raises(DataError, match="cifar-100-python/train: no such file"):
        data.load({"name": "cifar100", "root": str(tmp_path)})


def test_embedded_digits_default():
    ds = data.load({"name": "digits"})
    assert ds.train.images.shape == (1437, 3, 32, 32) and len(ds.test) == 360 and ds.num_classes == 10
    assert ds.train.images.max() > 200


def test_crop_flip_matches_numpy_reference():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    dy, dx, flip = data.augment_params(6, seed=3, iteration=11)
    out = data.crop_flip(x, dy, dx, flip).numpy()
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)))
    for i in range(6):
        ref = xp[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        if flip[i]:
            ref = ref[:, :, ::-1]
        assert np.array_equal(out[i], ref)


def test_augmentation_is_seeded_and_covers_all_offsets():
    a, b = data.augment_params(5000, 0, 7), data.augment_params(5000, 0, 7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], data.augment_params(5000, 0, 8)[0])
    assert set(a[0].tolist()) == set(range(9)) and 0.45 < a[2].float().mean() < 0.55


def test_rank_shards_concatenate_to_the_single_process_batch(cifar):
    plan = data.plan_epoch(cifar, seed=0, epoch=2, spe=10, batch_size=100, augment=True)
    full_x, full_y = data.train_batch(cifar, plan, 3)
    shards = [data.train_batch(cifar, plan, 3, rank=r, world=4) for r in range(4)]
    assert torch.equal(torch.cat([s[0] for s in shards]), full_x)
    assert torch.equal(torch.cat([s[1] for s in shards]), full_y)


@pytest.mark.parametrize("augment", [True, False])
def test_planned_epoch_gives_each_iterations_seeded_batch(cifar, augment):
    """The plan made at an epoch's start holds, for every step, the batch defined by (seed, iteration)."""
    B, spe, seed, epoch = 50, 4, 3, 5
    plan = data.plan_epoch(cifar, seed, epoch, spe, B, augment)
    order = data.epoch_order(len(cifar.train), seed, epoch)
    for step in range(spe):
        idx = order[step * B:(step + 1) * B]
        want = cifar.train.images[idx]
        if augment:
            want = data.crop_flip(want, *data.augment_params(B, seed, epoch * spe + step))
        x, y = data.train_batch(cifar, plan, step)
        assert torch.equal(x, cifar.normalize(want)) and torch.equal(y, cifar.train.labels[idx])


def test_epoch_order_is_a_seeded_permutation():
    a = data.epoch_order(100, 1, 0)
    assert torch.equal(a, data.epoch_order(100, 1, 0)) and not torch.equal(a, data.epoch_order(100, 1, 1))
    assert sorted(a.tolist()) == list(range(100))


class Marker:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar_pickles_are_read_without_running_code(tmp_path, monkeypatch):
    monkeypatch.setenv("HEURBENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x = np.random.default_rng(0).integers(0, 256, (20, 3072), dtype=np.uint8)
    for i, f in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        # the way CIFAR's are: protocol 2, bytes keys, a uint8 array, a list of ints, file names
        batch = {b"batch_label": b"training batch", b"labels": [(i + j) % 10 for j in range(20)], b"data": x,
                 b"filenames": [b"%d.png" % j for j in range(20)]}
        (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
    ds = data.load({"name": "cifar10", "root": str(tmp_path)})
    assert ds.train.images.shape == (100, 3, 32, 32) and ds.num_classes == 10
    assert torch.equal(ds.test.images, torch.from_numpy(x.reshape(20, 3, 32, 32)))
    marker = tmp_path / "marker"
    crafted = {"data": x, "labels": list(range(20)), "x": Marker(marker)}
    (folder / "data_batch_4").write_bytes(pickle.dumps(crafted, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_4: not a CIFAR pickle batch \(refused global io.open") as err:
        data.load({"name": "cifar10", "root": str(tmp_path)})
    assert "\n" not in str(err.value) and not marker.exists()
    (folder / "data_batch_4").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="holds a list, expected a dict"):
        data.load({"name": "cifar10", "root": str(tmp_path)})


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 57, 2] * 5, "labels run to 57 but 54 classes in between have no images"),
    ([0, 1, -1, 2] * 5, "train label -1 is negative"),
])
def test_labels_out_of_range_are_refused(tmp_path, monkeypatch, labels, message):
    monkeypatch.setenv("HEURBENCH_CACHE", str(tmp_path / "cache"))
    t = pq.read_table(CIFAR / "test.parquet").slice(0, len(labels))
    t = t.set_column(t.column_names.index("label"), "label", pa.array(labels, pa.int64()))
    for f in ("train.parquet", "test.parquet"):
        pq.write_table(t, tmp_path / f)
    with pytest.raises(DataError, match=message):
        data.load({"name": "parquet", "root": str(tmp_path)})
