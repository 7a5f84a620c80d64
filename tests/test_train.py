import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from harness import checkpoints, confine
from harness.config import parse_trial
from harness.train import run_trial

DETERMINISTIC = ["trial_id", "kind", "split", "epoch", "iteration", "lr", "loss", "accuracy", "grad_norm",
                 "weight_norm", "seed", "world_size"]


def ckpt(out, cfg, name):
    return checkpoints.load(out / "trials" / cfg.trial_id() / "ckpt" / name)


def test_trial_writes_metrics_checkpoints_status_and_config(trial_dict, tmp_path, caplog):
    trial_dict["tags"] = {"lr": 0.02, "variant": "sb"}
    trial_dict["data"]["val_size"] = 100
    trial_dict["checkpoints"] = {"iterations": [0, 5], "epochs": [1]}
    cfg = parse_trial(trial_dict)
    with caplog.at_level("INFO", logger="heurbench.train"):
        assert run_trial(cfg, tmp_path / "run") == "done"
    df = pd.read_parquet(tmp_path / "run" / "metrics")
    expected_cols = {"sweep", "trial_id", "lr", "variant", "seed", "world_size", "bn_batch", "kind", "split", "epoch",
                     "iteration", "loss", "accuracy", "grad_norm", "weight_norm", "wall_time", "images_per_s"}
    assert expected_cols <= set(df.columns)
    assert (df.sweep == "run").all() and (df.variant == "sb").all()
    steps = df[df.kind == "step"]
    assert steps.iteration.tolist() == list(range(0, 16, 2))
    assert steps.grad_norm.notna().all() and (steps.images_per_s > 0).all()
    ev = df[df.kind == "eval"]
    assert sorted(ev.split.unique()) == ["test", "train", "val"]
    assert ev[ev.split == "test"].iteration.tolist() == [8, 16]
    assert ev.accuracy.between(0, 1).all()
    tdir = tmp_path / "run" / "trials" / cfg.trial_id()
    names = sorted(p.name for p in (tdir / "ckpt").iterdir())
    assert names == ["epoch=001.pt", "iter=000000.pt", "iter=000005.pt", "iter=000016.pt", "last.pt"]
    assert json.loads((tdir / "status.json").read_text())["state"] == "done"
    assert parse_trial(yaml.safe_load((tdir / "config.yaml").read_text())).trial_id() == cfg.trial_id()
    assert any("img/s" in r.message and "ETA" in r.message for r in caplog.records)


def test_checkpoint_restores_model_exactly(trial_dict, tmp_path):
    cfg = parse_trial(trial_dict)
    run_trial(cfg, tmp_path)
    ck = ckpt(tmp_path, cfg, "iter=000016.pt")
    model = checkpoints.load_model(tmp_path / "trials" / cfg.trial_id() / "ckpt" / "iter=000016.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["model"][k])
    last = ckpt(tmp_path, cfg, "last.pt")
    assert all(torch.equal(last["model"][k], v) for k, v in ck["model"].items())
    assert last["iteration"] == 16 and last["optimizer"]["state"]


def test_frozen_group_bit_identical_until_unfreeze(trial_dict, tmp_path):
    trial_dict["freeze"] = {"groups": ["fc_stack"], "length": 4}
    trial_dict["optim"]["weight_decay"] = 5e-3
    trial_dict["checkpoints"] = {"iterations": [0, 4, 5]}
    cfg = parse_trial(trial_dict)
    run_trial(cfg, tmp_path)
    w0, w4, w5 = (ckpt(tmp_path, cfg, f"iter={i:06d}.pt")["model"] for i in (0, 4, 5))
    fc = [k for k in w0 if k.startswith("classifier.")]
    conv = [k for k in w0 if k.startswith("features.")]
    assert fc and conv
    assert all(torch.equal(w0[k], w4[k]) for k in fc)
    assert all(not torch.equal(w0[k], w4[k]) for k in conv)
    assert all(not torch.equal(w4[k], w5[k]) for k in fc)


def test_divergence_is_a_result(trial_dict, tmp_path):
    trial_dict["optim"]["lr"] = 1e4
    cfg = parse_trial(trial_dict)
    assert run_trial(cfg, tmp_path) == "diverged"
    st = json.loads((tmp_path / "trials" / cfg.trial_id() / "status.json").read_text())
    assert st["state"] == "diverged" and 0 <= st["diverged_at"] < 16 and "non-finite" in st["reason"]
    assert run_trial(cfg, tmp_path, resume=True) == "diverged"  # a finished trial is skipped, not re-run


def test_distillation_trial_from_teacher_checkpoint(trial_dict, tmp_path):
    teacher = parse_trial(trial_dict)
    run_trial(teacher, tmp_path / "teacher")
    trial_dict["distill"] = {"teacher": str(tmp_path / "teacher" / "trials" / teacher.trial_id() / "ckpt" / "last.pt"),
                             "temperature": 5.0}
    student = parse_trial(trial_dict)
    assert run_trial(student, tmp_path / "student") == "done"
    df = pd.read_parquet(tmp_path / "student" / "metrics")
    assert df.loss.notna().all()
    trial_dict["distill"]["teacher"] = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="distill.teacher"):
        run_trial(parse_trial(trial_dict), tmp_path / "s2")


def test_fresh_run_replaces_earlier_results(trial_dict, tmp_path):
    cfg = parse_trial(trial_dict)
    run_trial(cfg, tmp_path)
    run_trial(cfg, tmp_path)
    df = pd.read_parquet(tmp_path / "metrics")
    assert not df.duplicated(["kind", "split", "iteration"]).any()


@pytest.mark.slow
def test_resume_after_kill_reproduces_uninterrupted_rows(trial_dict, tmp_path):
    trial_dict["budget"] = {"iterations": 48}
    trial_dict["data"]["augment"] = True
    trial_dict["model"]["dropout"] = 0.0
    trial_dict["checkpoints"] = {"iterations": [0, 40]}
    cfg = parse_trial(trial_dict)
    run_trial(cfg, tmp_path / "ref")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(trial_dict))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "heurbench.cli", "train", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.txt", "w"))
    status = out / "trials" / cfg.trial_id() / "status.json"
    deadline = time.time() + 600
    while time.time() < deadline:
        if status.exists() and json.loads(status.read_text())["iteration"] >= 16:
            break
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]  # died before iteration 16
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = json.loads(status.read_text())
    assert st["state"] == "running" and 16 <= st["iteration"] < 48, st
    subprocess.run(cmd + ["--resume"], check=True, capture_output=True)
    ref = pd.read_parquet(tmp_path / "ref" / "metrics")[DETERMINISTIC]
    got = pd.read_parquet(out / "metrics")[DETERMINISTIC]
    key = ["kind", "split", "iteration"]
    ref, got = ref.sort_values(key).reset_index(drop=True), got.sort_values(key).reset_index(drop=True)
    assert not got.duplicated(key).any()
    pd.testing.assert_frame_equal(ref, got, check_exact=False, rtol=1e-5)
    a, b = (checkpoints.load(o / "trials" / cfg.trial_id() / "ckpt" / "iter=000048.pt")["model"] for o in (tmp_path / "ref", out))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_init_from_a_sweep_reference_starts_from_that_checkpoint(trial_dict, tmp_path):
    src = parse_trial(trial_dict)
    run_trial(src, tmp_path / "pre")
    (tmp_path / "pre" / "sweep.yaml").write_text(yaml.safe_dump(
        {"name": "pre", "points": [{"index": 0, "trial_id": src.trial_id(), "values": {}}]}))
    trial_dict["model"]["init_from"] = "@pre:0:last.pt"
    trial_dict["checkpoints"] = {"iterations": [0]}
    cfg = parse_trial(trial_dict)
    run_trial(cfg, tmp_path / "fine")
    start = ckpt(tmp_path / "fine", cfg, "iter=000000.pt")["model"]
    pre = ckpt(tmp_path / "pre", src, "last.pt")["model"]
    assert all(torch.equal(start[k], pre[k]) for k in pre)
    trial_dict["model"]["init_from"] = "@pre:3:last.pt"
    with pytest.raises(ValueError, match="sweep 'pre' has points \\[0\\]"):
        run_trial(parse_trial(trial_dict), tmp_path / "fine2")
    trial_dict["model"]["init_from"] = "@missing:0:last.pt"
    with pytest.raises(FileNotFoundError, match="run sweep 'missing' first"):
        run_trial(parse_trial(trial_dict), tmp_path / "fine3")


@pytest.mark.slow
def test_compiled_trial_matches_eager(trial_dict, tmp_path):
    """perf.compile (inductor on CPU here; CUDA graphs with reduce-overhead on a GPU): the same rows as the
    eager loop up to float summation order, and checkpoints of the plain model (no compile wrapper keys)."""
    trial_dict["model"] = {"name": "vgg11", "bn": True, "width": 0.125}
    trial_dict["data"]["augment"] = False  # the crops' zero padding gives max-pool ties, broken either way
    eager = parse_trial(trial_dict)
    compiled = parse_trial({**trial_dict, "perf": {"compile": "default"}})
    assert run_trial(compiled, tmp_path / "compiled") == run_trial(eager, tmp_path / "eager") == "done"
    a, b = (pd.read_parquet(tmp_path / run / "metrics").sort_values(["kind", "split", "iteration"])
            .reset_index(drop=True) for run in ("compiled", "eager"))
    assert a[["kind", "split", "iteration"]].equals(b[["kind", "split", "iteration"]])
    pd.testing.assert_frame_equal(a[["loss", "grad_norm", "weight_norm", "lr"]],
                                  b[["loss", "grad_norm", "weight_norm", "lr"]], rtol=2e-2)
    pd.testing.assert_series_equal(a.accuracy, b.accuracy, rtol=0, atol=0.025)  # 5 of 200 images
    ca, cb = ckpt(tmp_path / "compiled", compiled, "last.pt"), ckpt(tmp_path / "eager", eager, "last.pt")
    assert ca["model"].keys() == cb["model"].keys()
    for k, v in cb["model"].items():
        torch.testing.assert_close(ca["model"][k], v, rtol=2e-2, atol=2e-3)


def test_resume_removes_temp_files_an_interrupted_write_left(trial_dict, tmp_path):
    cfg = parse_trial(trial_dict)
    run_trial(cfg, tmp_path)
    t = tmp_path / "trials" / cfg.trial_id()
    status = json.loads((t / "status.json").read_text())
    (t / "status.json").write_text(json.dumps({**status, "state": "running"}))  # killed after its last save
    stale = [t / "ckpt" / ".last.pt.k2j3.tmp", t / ".status.json.x1.tmp",
             tmp_path / "metrics" / cfg.trial_id() / ".part-00007.parquet.q9.tmp"]
    other = tmp_path / "metrics" / "0123456789" / ".part-00000.parquet.q9.tmp"  # another trial's write in flight
    other.parent.mkdir()
    for p in stale + [other]:
        p.write_bytes(b"x" * 100)
    assert run_trial(cfg, tmp_path, resume=True) == "done"
    assert not any(p.exists() for p in stale) and other.exists()


class Marker:
    """Unpickling this runs code (what a crafted checkpoint would do): it writes a marker file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("entry", ["resume", "init_from", "teacher"])
def test_a_checkpoint_that_runs_code_is_refused_with_one_line(trial_dict, tmp_path, entry):
    marker = tmp_path / "marker"
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "model_spec": {"name": "student_cnn"}, "x": Marker(marker)}, bad)
    cfg = parse_trial(trial_dict)
    if entry == "resume":
        last = tmp_path / "run" / "trials" / cfg.trial_id() / "ckpt" / "last.pt"
        confine.claim(tmp_path / "run", "run")  # the folder as heurbench made it
        last.parent.mkdir(parents=True)
        last.write_bytes(bad.read_bytes())
    else:
        key = ("model", "init_from") if entry == "init_from" else ("distill", "teacher")
        trial_dict.setdefault(key[0], {})[key[1]] = str(bad)
        cfg = parse_trial(trial_dict)
    with pytest.raises(ValueError, match="not a readable heurbench checkpoint") as err:
        run_trial(cfg, tmp_path / "run", resume=True)
    assert "\n" not in str(err.value) and not marker.exists()


def test_cli_resume_without_a_last_checkpoint_and_a_corrupt_one_are_one_line_errors(trial_dict, tmp_path, capsys):
    from heurbench.cli import main

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(trial_dict))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing to resume" in err and "without --resume" in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing written
    last = out / "trials" / parse_trial(trial_dict).trial_id() / "ckpt" / "last.pt"
    confine.claim(out, "run")
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 truncated")
    assert main(["train", str(path), "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "truncated or corrupt" in err and len(err.splitlines()) == 1
    status = json.loads((last.parent.parent / "status.json").read_text())
    assert status["state"] == "failed" and "truncated or corrupt" in status["reason"]
