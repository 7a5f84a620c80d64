"""analysis.results and analysis.loading: atomic, keyed Parquet parts; checkpoint ids and run folders."""
import os

import pandas as pd
import pytest
import torch

from analysis import loading, results
from harness.layout import run_of_checkpoint


def test_write_is_keyed_and_idempotent(tmp_path):
    rows = [{"t": 0.0, "loss": 1.0}, {"t": 1.0, "loss": 2.0}]
    p1 = results.write(tmp_path, "connect", rows, ["trialA/epoch=030", "trialB/epoch=030"], {"curve": "bezier"})
    p2 = results.write(tmp_path, "connect", rows, ["trialA/epoch=030", "trialB/epoch=030"], {"curve": "bezier"})
    p3 = results.write(tmp_path, "connect", rows, ["trialA/epoch=030", "trialB/epoch=030"], {"curve": "polychain"})
    assert p1 == p2 != p3 and p1.parent == tmp_path / "analysis" / "connect"
    df = results.read(tmp_path, "connect")
    assert len(df) == 4  # rewriting the same key replaced the part
    assert list(df.columns[:5]) == ["kind", "ckpt_a", "ckpt_b", "ckpts", "curve"]
    assert (df["ckpts"] == "trialA/epoch=030,trialB/epoch=030").all()
    assert set(df["curve"]) == {"bezier", "polychain"} and (df["kind"] == "connect").all()
    assert sorted(os.listdir(p1.parent)) == sorted([p1.name, p3.name])  # no temp files left
    assert len(pd.read_parquet(tmp_path / "analysis" / "connect")) == 4


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(Exception):
        results.write(tmp_path, "bad", [{"x": object()}], ["a/b"])
    assert os.listdir(tmp_path / "analysis" / "bad") == []
    with pytest.raises(ValueError, match="no geometry rows"):
        results.write(tmp_path, "geometry", [], ["a/b"])
    with pytest.raises(FileNotFoundError):
        results.read(tmp_path, "nothing")


def test_checkpoint_id_and_run_folder(tmp_path):
    path = tmp_path / "runs" / "s2" / "trials" / "abc123" / "ckpt" / "epoch=030.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": {}, "model_spec": {"name": "vgg16"}, "trial_id": "abc123"}, path)
    ckpt = loading.load(path)
    assert loading.checkpoint_id(path) == loading.checkpoint_id(ckpt["path"], ckpt["trial_id"]) == "abc123/epoch=030"
    assert run_of_checkpoint(path).path == (tmp_path / "runs" / "s2").resolve()
    loose = tmp_path / "last.pt"
    torch.save({"model": {}, "model_spec": {}, "trial_id": "moved"}, loose)
    assert loading.checkpoint_id(loose) == f"{tmp_path.name}/last"
    assert loading.checkpoint_id(loose, loading.load(loose)["trial_id"]) == "moved/last"  # the stored trial wins
    assert run_of_checkpoint(loose).path == tmp_path.resolve()
    derived = tmp_path / "runs" / "s2" / "derived" / "connect" / "bend-x.pt"
    assert run_of_checkpoint(derived).path == (tmp_path / "runs" / "s2").resolve()
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a heurbench checkpoint"):
        loading.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        loading.load(tmp_path / "missing.pt")
