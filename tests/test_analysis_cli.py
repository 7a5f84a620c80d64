"""`heurbench analyze ...` end to end on real harness models and the embedded digits data."""
import argparse

import pandas as pd
import pytest
import torch

from analysis import cli, results
from harness.errors import ConfigError

DATA = {"name": "digits", "train_subset": 64, "test_subset": 32}


def parser():
    p = argparse.ArgumentParser(prog="heurbench")
    cli.add_parser(p.add_subparsers(dest="command"), "analyses")
    return p


def run(*argv):
    args = parser().parse_args(["analyze", *map(str, argv)])
    args.func(args)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three student_cnn checkpoints of one trial plus one VGG-11-BN checkpoint, as the harness lays them out."""
    from harness.models import build

    root = tmp_path_factory.mktemp("runs") / "toy"
    paths = {}
    for name, spec, seed in [("e1", {"name": "student_cnn", "num_classes": 10}, 0),
                             ("e2", {"name": "student_cnn", "num_classes": 10}, 1),
                             ("e3", {"name": "student_cnn", "num_classes": 10}, 2),
                             ("bn", {"name": "vgg11", "bn": True, "num_classes": 10}, 3)]:
        torch.manual_seed(seed)
        trial = "vggbn" if name == "bn" else "student"
        path = root / "trials" / trial / "ckpt" / f"epoch={seed + 1:03d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": build(spec).state_dict(), "model_spec": spec, "data_spec": DATA, "trial_id": trial,
                    "epoch": seed + 1, "iteration": 10 * (seed + 1)}, path)
        paths[name] = path
    return root, paths


def test_every_subcommand_is_registered_with_func():
    sub = parser()._subparsers._group_actions[0].choices["analyze"]
    choices = sub._subparsers._group_actions[0].choices
    assert set(choices) == {"cca", "connect", "plane", "sharpness", "geometry", "swa", "frequency"}
    args = parser().parse_args(["analyze", "cca", "a.pt", "b.pt", "--measure", "cka"])
    assert callable(args.func) and args.measure == "cka"


def test_cca_rows_written_are_the_library_functions_rows(sweep, tmp_path, capsys):
    from analysis.cca import cca_rows
    from analysis.loading import Checkpoints

    _, p = sweep
    layers = ["classifier.1", "classifier.3"]
    run("cca", p["e1"], p["e2"], "--measure", "cka", "--inputs", 30, "--layers", *layers, "--device", "cpu",
        "--out", tmp_path)
    cs = Checkpoints.open([p["e1"], p["e2"]], device="cpu")
    test = cs.batches("test", 30)
    rows = cca_rows(cs.model(0), cs.model(1), test.inputs, test.transform, layers_a=layers, layers_b=layers,
                    measure="cka")
    written = results.read(tmp_path, "cca")
    assert {"n", "d_a", "d_b", "null_mean", "null_max", "underdetermined"} <= set(rows.columns)
    assert written[rows.columns].to_dict("records") == rows.to_dict("records")
    assert set(written.ckpts) == {"student/epoch=001,student/epoch=002"} and set(written.inputs) == {30}
    assert set(written.permutations) == {3} and set(written.n) == {30}


def test_cca_more_inputs_than_the_split_is_a_one_line_error(sweep, tmp_path):
    _, p = sweep
    with pytest.raises(ConfigError) as err:  # heurbench's main prints it as one line and exits 2
        run("cca", p["e1"], p["e2"], "--inputs", 40, "--device", "cpu", "--out", tmp_path)
    assert str(err.value) == "--inputs 40: the test split has only 32 images"
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cca_between_student_and_vgg_bn(sweep, capsys):
    root, p = sweep
    run("cca", p["e1"], p["bn"], "--measure", "cka", "--inputs", 32, "--layers-b", "features.3", "features.7",
        "classifier.6", "--device", "cpu")
    df = results.read(root, "cca")
    assert len(df) == 5 * 3 and set(df["ckpt_a"]) == {"student/epoch=001"} and set(df["ckpt_b"]) == {"vggbn/epoch=004"}
    assert df["similarity"].between(0, 1).all()
    assert len(list((root / "figures").glob("cca-*-heatmap.png"))) == 1


@pytest.mark.slow
def test_connect_plane_and_projection(sweep, capsys):
    root, p = sweep
    run("connect", p["e1"], p["e2"], "--curve", "bezier", "--epochs", 1, "--t-points", 3, "--batch-size", 32)
    barrier = results.read(root, "connect_barrier")
    assert set(barrier["path"]) == {"segment", "bezier"} and (barrier["loss_barrier"] >= 0).all()
    along = results.read(root, "connect")
    assert set(along["t"]) == {0.0, 0.5, 1.0} and set(along["split"]) == {"train", "test"}
    assert len(pd.read_parquet(root / "analysis" / "connect")) == len(along)  # the folder holds Parquet only
    bend = root / barrier["bend"].iloc[0]
    assert bend.parent == root / "derived" / "connect" and bend.is_file()
    run("plane", p["e1"], p["e2"], bend, p["e3"], "--grid", 2, "--margin", 0.0, "--test-images", 16)
    points = results.read(root, "plane_points")
    assert list(points["label"])[:2] == ["student/epoch=001", "student/epoch=002"]
    assert points["residual"].iloc[:3].abs().max() < 1e-2 * points["x"].abs().max()
    assert points["residual"].iloc[3] > 0  # e3 is off the plane
    assert len(results.read(root, "plane")) == 2 * 2 * 2
    assert len(list((root / "figures").glob("plane-*-test-loss.png"))) == 1


@pytest.mark.slow
def test_sharpness_geometry_swa_frequency(sweep, capsys):
    root, p = sweep
    for bn in ("running", "batch"):
        run("sharpness", p["e1"], "--iters", 3, "--probes", 2, "--train-images", 32, "--bn", bn)
    sharp = results.read(root, "sharpness")
    assert {"top_eigenvalue", "trace", "trace_stderr", "epoch"} <= set(sharp.columns)
    assert sorted(sharp.bn) == ["batch", "running"]  # one part each: the BN mode keys the result
    run("geometry", p["e1"], p["e2"], p["e3"], "--pairs", "first", "--barrier", "--t-points", 3)
    geo = results.read(root, "geometry")
    assert set(geo["group"]) == {"all", "features", "fc_stack"} and len(geo) == 2 * 3
    assert len(results.read(root, "error_barrier")) == 2 * 2
    run("swa", p["e1"], p["e2"], p["e3"], "--set", "test_subset=16")
    assert set(results.read(root, "swa")[["ckpt_a", "ckpt_c"]].iloc[0]) == {"student/epoch=001", "student/epoch=003"}
    run("frequency", p["e1"], "--box", 0.25)
    freq = results.read(root, "frequency")
    assert list(freq["variant"]) == ["original", "low", "mid", "high", "background"]
    assert "original" in capsys.readouterr().out
    averaged = next((root / "derived" / "swa").glob("swa-*.pt"))
    assert len(pd.read_parquet(root / "analysis" / "swa")) == 2
    assert pd.notna(torch.load(averaged, weights_only=False)["averaged"]).all()
