"""Bad input through the real CLI: malformed trial and sweep YAMLs, path escapes, unsafe or corrupt files.

Every case must end with exit code 2, exactly one stderr line `heurbench: error: ...` (no traceback),
nothing written outside the output folder (`runs/` in a sandbox: the sandbox's parent is listed before
and after) and the files of an already finished trial and sweep byte-for-byte unchanged. Most cases
fail at validation, before anything is written at all; the ones marked `runs` fail once the data is
loaded (steps per epoch, labels, pickles, checkpoints) and may write the failed trial's own status.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import BASE_TRIAL, CIFAR
from harness.config import parse_trial
from harness.confine import MARKER
from heurbench.cli import main


def trial(**changes) -> dict:
    """conftest's tiny trial with top-level sections replaced or updated (a dotted key sets one field)."""
    d = copy.deepcopy(BASE_TRIAL)
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = d
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return d


def put(path: str, content) -> str:
    """Write `content` (a mapping: YAML; str; bytes) to `path` under the cwd (the sandbox); returns `path`."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content)
    else:
        p.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def train(d, *extra) -> list[str]:
    return ["train", put("t.yaml", d), "--out", "runs", *extra]


def sweep(spec: dict, how: str = "plan") -> list[str]:
    spec = {"name": "s2", "base": trial(), **spec}
    argv = ["sweep", how, put("s.yaml", spec), "--out", "runs"]
    return argv + (["--index", "0"] if how == "trial" else [])


def trial_files(d: dict) -> Path:
    return Path("runs") / "trials" / parse_trial(d).trial_id()


class Marker:
    """Unpickling this runs code: it creates the file `path` (what a crafted data or checkpoint file would do)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def cifar_folder(batches: dict) -> str:
    """A cifar-10-batches-py folder: every batch a 10-image CIFAR-style pickle unless `batches` overrides it."""
    x = np.random.default_rng(0).integers(0, 256, (10, 3072), dtype=np.uint8)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        blob = batches.get(f) or pickle.dumps({b"batch_label": b"batch", b"labels": list(range(10)), b"data": x,
                                                b"filenames": [b"%d.png" % i for i in range(10)]}, protocol=2)
        put(f"cifar/cifar-10-batches-py/{f}", blob)
    return "cifar"


def parquet_folder(labels: list[int]) -> str:
    t = pq.read_table(CIFAR / "test.parquet").slice(0, len(labels))
    t = t.set_column(t.column_names.index("label"), "label", pa.array(labels, pa.int64()))
    Path("pq").mkdir()
    for f in ("train.parquet", "test.parquet"):
        pq.write_table(t, f"pq/{f}")
    return "pq"


def payload_cifar():
    batch = pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10)), "x": Marker("marker")},
                         protocol=2)
    return train(trial(data={"name": "cifar10", "root": cifar_folder({"data_batch_2": batch}), "batch_size": 5}))


def resume_with(files: dict) -> list[str]:
    d = trial(seed=5)
    for name, content in files.items():
        put(str(trial_files(d) / name), content)
    return train(d, "--resume")


def tensor_only_pt() -> bytes:
    put("x.pt", b"")
    torch.save(torch.zeros(3), "x.pt")
    return Path("x.pt").read_bytes()


def truncated_pt() -> bytes:
    torch.save({"model": {"w": torch.zeros(100)}, "iteration": 3}, "y.pt")
    return Path("y.pt").read_bytes()[:200]


def weights_pt(spec_width: float, weights_width: float) -> str:
    """A heurbench checkpoint of a student CNN whose spec says `spec_width` and whose weights are `weights_width`'s."""
    from harness.models import build

    spec = {"name": "student_cnn", "width": spec_width, "num_classes": 10, "in_channels": 3}
    torch.save({"model": build({**spec, "width": weights_width}).state_dict(), "model_spec": spec}, "w.pt")
    return "w.pt"


def other_trials_last_pt() -> bytes:
    torch.save({"model": {}, "model_spec": {"name": "student_cnn"}, "optimizer": {}, "rng": {}, "iteration": 8,
                "parts": 1, "elapsed": 1.0, "trial_id": "0123456789"}, "o.pt")
    return Path("o.pt").read_bytes()


def truncated_metrics_report() -> list[str]:
    put("runs/s1_x/sweep.yaml", {"name": "s1_x", "base": trial(), "points": [{"index": 0, "trial_id": "abc",
                                                                              "values": {}}]})
    put("runs/s1_x/metrics/abc/part-00000.parquet", b"PAR1\x00\x01 truncated")
    return ["report", "runs/s1_x"]


DUPLICATE = yaml.safe_dump(trial()) + "seed: 3\n"
LAUGHS = "x-bomb:\n" + "".join(f"  {c}: &{c} [" + ", ".join([f"*{p}"] * 9 if p.strip() else ["x"] * 9) + "]\n"
                              for p, c in zip(" abcdefgh", "abcdefghi"))  # 9^9 values once expanded
TAG = "!!python/object/apply:os.system ['touch marker']"


def bomb_as_value() -> list[str]:
    return ["train", put("t.yaml", LAUGHS + yaml.safe_dump(trial()).replace("model:\n", "model:\n  width: *i\n", 1)),
            "--out", "runs"]


def bomb_in_grid() -> list[str]:
    return ["sweep", "plan", put("s.yaml", LAUGHS + "name: s2\nbase: " + yaml.safe_dump(trial(), default_flow_style=True)
                                 + "grid: {seed: [*i, 1]}\n"), "--out", "runs"]


def tagged_sweep_yaml_report() -> list[str]:
    put("runs/s1_t/sweep.yaml", f"name: s1_t\npoints: {TAG}\n")
    return ["report", "runs/s1_t"]


def tagged_data_spec() -> list[str]:
    return ["analyze", "cca", "a.pt", "b.pt", "--data", put("spec.yaml", f"name: {TAG}\n")]


def empty_parquet_folder() -> str:
    t = pq.read_table(CIFAR / "test.parquet").slice(0, 0)
    Path("empty").mkdir()
    for f in ("train.parquet", "test.parquet"):
        pq.write_table(t, f"empty/{f}")
    return "empty"

TRUNCATED = yaml.safe_dump(trial())[:60] + "{"

# (case id, argv builder run in the sandbox, expected part of the error line, whether the run may write in runs/)
CASES = [
    # trial YAML: types, keys, values
    ("unknown-key", lambda: train(trial(optim={"name": "sgd", "lr": 0.1, "lrr": 1})),
     "unknown key 'optim.lrr' (did you mean 'lr'?)", False),
    ("misspelled-top-level", lambda: train({("modell" if k == "model" else k): v for k, v in trial().items()}),
     "unknown key 'modell' (did you mean 'model'?)", False),
    ("misspelled-nested", lambda: train(trial(warmup={"lenght": 10})), "unknown key 'warmup.lenght' (did you mean "
                                                                       "'length'?)", False),
    ("bad-type", lambda: train(trial(data__batch_size="big")), "data.batch_size = 'big'", False),
    ("lr-inf", lambda: ["train", put("t.yaml", yaml.safe_dump(trial()).replace("lr: 0.02", "lr: .inf")), "--out",
                        "runs"],
     "optim.lr = inf: Input should be a finite number", False),
    ("lr-nan", lambda: train(trial(optim__lr=float("nan"))), "optim.lr = nan: Input should be a finite number", False),
    ("lr-negative", lambda: train(trial(optim__lr=-1)), "optim.lr = -1", False),
    ("duplicate-key", lambda: ["train", put("t.yaml", DUPLICATE), "--out", "runs"], "duplicate key 'seed'", False),
    ("duplicate-nested-key", lambda: ["train", put("t.yaml", yaml.safe_dump(trial()).replace(
        "  lr: 0.02", "  lr: 0.02\n  lr: 0.03")), "--out", "runs"], "duplicate key 'lr'", False),
    ("unknown-model", lambda: train(trial(model__name="vgg19")), "unknown model 'vgg19'", False),
    ("two-budgets", lambda: train(trial(budget={"epochs": 1, "iterations": 3})), "exactly one of epochs", False),
    ("not-a-mapping", lambda: ["train", put("t.yaml", "- a\n- b\n"), "--out", "runs"], "expected a mapping", False),
    ("truncated-yaml", lambda: ["train", put("t.yaml", TRUNCATED), "--out", "runs"], "not valid YAML", False),
    ("empty-file", lambda: ["train", put("t.yaml", ""), "--out", "runs"], "t.yaml: empty file", False),
    ("directory", lambda: ["train", str(Path("d.yaml").mkdir() or "d.yaml"), "--out", "runs"], "is a folder", False),
    ("binary-garbage", lambda: ["train", put("t.yaml", bytes(range(256)) * 4), "--out", "runs"], "t.yaml: not",
     False),
    ("missing-file", lambda: ["train", "nope.yaml", "--out", "runs"], "nope.yaml: no such file", False),
    # bounded and safe YAML (harness/yamlfile.py)
    ("yaml-alias-bomb-value", bomb_as_value, "t.yaml: not valid YAML (more than 1,000,000 values once its aliases",
     False),
    ("yaml-alias-bomb-grid", bomb_in_grid, "s.yaml: not valid YAML (more than 1,000,000 values", False),
    ("yaml-recursive-alias", lambda: ["train", put("t.yaml", "a: &a [*a]\n"), "--out", "runs"], "recursive", False),
    ("yaml-deep", lambda: ["train", put("t.yaml", "[" * 20000 + "]" * 20000), "--out", "runs"],
     "t.yaml: not valid YAML (nested more than 64 levels deep)", False),
    ("yaml-too-large", lambda: ["train", put("t.yaml", "# padding\n" * 120_000), "--out", "runs"],
     "t.yaml: 1,200,000 bytes, larger than the 1,048,576", False),
    ("yaml-python-tag-trial", lambda: ["train", put("t.yaml", TAG + "\n"), "--out", "runs"],
     "t.yaml: line 1 not valid YAML (could not determine a constructor for the tag", False),
    ("yaml-python-tag-sweep", lambda: ["sweep", "plan", put("s.yaml", f"name: s2\nbase: {TAG}\n")],
     "s.yaml: line 2 not valid YAML (could not determine a constructor", False),
    ("yaml-python-tag-data", tagged_data_spec, "spec.yaml: line 1 not valid YAML (could not determine", False),
    ("yaml-python-tag-set", lambda: ["analyze", "cca", "a.pt", "b.pt", "--set", f"name={TAG}"],
     "--set name=!!python/object/apply:os.system ['touch marker']: line 1 not valid YAML", False),
    ("yaml-python-tag-report", tagged_sweep_yaml_report, "sweep.yaml: line 2 not valid YAML", True),
    # silent accepts, now errors
    ("compact-truncated-part", lambda: ["results", "compact", "runs/s"],
     "part-00000.parquet: an unreadable metrics part", True),  # takes the trial lock
    ("bool-for-int", lambda: train(trial(data__batch_size=True)),
     "data.batch_size = True: expected a number, got a boolean", False),
    ("bool-in-int-list", lambda: train(trial(checkpoints={"iterations": [0, True]})), "got a boolean", False),
    ("train-subset-beyond-data", lambda: train(trial(data__train_subset=1_000_000)),
     "data.train_subset = 1000000: larger than the", True),
    ("test-subset-beyond-data", lambda: train(trial(data__test_subset=99_999)),
     "data.test_subset = 99999: larger than the", True),
    ("empty-parquet", lambda: train(trial(data={"name": "parquet", "root": empty_parquet_folder()})),
     "train.parquet: no rows", True),
    ("cuda-without-cuda", lambda: train(trial(perf={"device": "cuda"})),
     "perf.device = 'cuda' but no CUDA device is visible", True),
    # names that would leave the results folder (no --out: the folder is runs/<name>)
    ("name-dotdot-path", lambda: ["train", put("t.yaml", trial(name="../../x"))], "must be a plain name", False),
    ("name-absolute", lambda: ["train", put("t.yaml", trial(name=str(Path("..").resolve() / "abs")))],
     "must be a plain name", False),
    ("name-dotdot", lambda: ["train", put("t.yaml", trial(name=".."))], "must be a plain name", False),
    ("name-separator", lambda: ["train", put("t.yaml", trial(name="a/b"))], "must be a plain name", False),
    # beyond the budget
    ("checkpoint-beyond-iterations", lambda: train(trial(checkpoints={"iterations": [0, 17]})),
     "[17] beyond the budget of 16 iterations", False),
    ("checkpoint-beyond-epochs", lambda: train(trial(budget={"epochs": 2}, checkpoints={"epochs": [5]})),
     "[5] beyond the budget of 2 epochs", False),
    ("milestone-beyond-iterations", lambda: train(trial(schedule={"name": "step", "unit": "iteration",
                                                                  "milestones": [8, 20]})),
     "[20] at or beyond the budget of 16 iterations", False),
    ("epoch-checkpoint-beyond-iteration-budget", lambda: train(trial(checkpoints={"epochs": [3]})),
     "[3] beyond the budget of 16 iterations (8 per epoch)", True),
    ("epoch-milestone-beyond-iteration-budget", lambda: train(trial(schedule={"name": "step", "milestones": [2]})),
     "[2] at or beyond the budget of 16 iterations (8 per epoch)", True),
    # data
    ("data-root-missing", lambda: train(trial(data={"name": "parquet", "root": "nowhere"})),
     "train.parquet: no such file", True),
    ("label-57", lambda: train(trial(data={"name": "parquet", "root": parquet_folder([0, 1, 57, 3] * 5),
                                           "batch_size": 5})), "(a stray label 57?)", True),
    ("label-negative", lambda: train(trial(data={"name": "parquet", "root": parquet_folder([0, 1, -1, 2] * 5),
                                                 "batch_size": 5})), "train label -1 is negative", True),
    ("cifar-pickle-payload", payload_cifar, "not a CIFAR pickle batch (refused global", True),
    ("cifar-pickle-garbage", lambda: train(trial(data={"name": "cifar10", "root": cifar_folder(
        {"test_batch": b"\x80\x02garbage"}), "batch_size": 5})), "test_batch: not a CIFAR pickle batch", True),
    # checkpoints and results files
    ("reference-escape", lambda: train(trial(model__init_from="@..:0:last.pt")), "must be a plain name", True),
    ("reference-malformed", lambda: train(trial(model__init_from="@s:x")), "expected '@<sweep>:<point index>:<file>'",
     True),
    ("teacher-missing", lambda: train(trial(distill={"teacher": "none.pt"})), "none.pt", True),
    ("truncated-last-pt", lambda: resume_with({"ckpt/last.pt": truncated_pt()}), "truncated or corrupt", True),
    ("tensor-only-last-pt", lambda: resume_with({"ckpt/last.pt": tensor_only_pt()}), "not a heurbench checkpoint",
     True),
    ("tensor-only-init-from", lambda: train(trial(model__init_from=put("z.pt", tensor_only_pt()))),
     "not a heurbench checkpoint", True),
    ("init-from-other-architecture", lambda: train(trial(model__init_from=weights_pt(0.5, 0.5))),
     "w.pt: its weights do not fit the model: 'features.0.weight' is [32, 3, 5, 5] in the checkpoint, "
     "[16, 3, 5, 5] in the model", True),
    ("teacher-weights-not-its-spec", lambda: train(trial(distill={"teacher": weights_pt(0.25, 0.5)})),
     "w.pt: its weights do not fit the model", True),
    ("resume-other-trials-checkpoint", lambda: resume_with({"ckpt/last.pt": other_trials_last_pt()}),
     "a checkpoint of trial 0123456789, not of this trial", True),
    ("truncated-status-json", lambda: resume_with({"status.json": '{"state": "do'}),
     "status.json: not a readable status file", False),
    ("status-json-list", lambda: resume_with({"status.json": "[1, 2]"}), "holds a list", False),
    ("truncated-metrics-part", truncated_metrics_report, "part-00000.parquet", False),
    # sweep YAMLs
    ("sweep-name-dotdot", lambda: sweep({"name": ".."}, "trial"), "name = '..': must be a plain name", False),
    ("sweep-name-path", lambda: sweep({"name": "../elsewhere"}, "trial"), "must be a plain name", False),
    ("sweep-name-absolute", lambda: sweep({"name": "/tmp"}, "trial"), "must be a plain name", False),
    ("sweep-misspelled-key", lambda: sweep({"grdi": {"seed": [1]}}), "unknown key 'grdi' (did you mean 'grid'?)",
     False),
    ("sweep-misspelled-resources", lambda: sweep({"resources": {"gpus_per_trail": 1}}),
     "unknown key 'resources.gpus_per_trail' (did you mean 'gpus_per_trial'?)", False),
    ("sweep-grid-misspelled", lambda: sweep({"grid": {"optim.lrr": [0.1]}}), "(did you mean 'lr'?)", False),
    ("sweep-when-unknown-key", lambda: sweep({"grid": {"optim.lr": [0.1, 0.2]}, "overrides": [
        {"when": {"data.batchsize": 50}, "set": {"optim.lr": 0.3}}]}),
     "overrides.0.when: unknown key 'data.batchsize' (did you mean 'batch_size'?)", False),
    ("sweep-grid-inf", lambda: sweep({"grid": {"optim.lr": [0.1, float("inf")]}}), "Input should be a finite number",
     False),
    ("sweep-duplicate-key", lambda: ["sweep", "plan", put("s.yaml", "name: a\nname: b\nbase_file: t.yaml\n")],
     "duplicate key 'name'", False),
    ("sweep-base-file-missing", lambda: sweep({"base": None, "base_file": "gone.yaml"}), "gone.yaml: no such file",
     False),
    ("sweep-base-file-directory", lambda: sweep({"base": None, "base_file": str(Path("dir").mkdir() or "dir")}),
     "is a folder", False),
    ("sweep-bad-reference", lambda: sweep({"grid": {"model.init_from": ["@s:0:x.pt"]}}, "trial"),
     "sweep.yaml not found", True),
    ("sweep-index-out-of-range", lambda: ["sweep", "trial", sweep({})[2], "--index", "7", "--out", "runs"],
     "--index 7", False),
    ("sweep-status-json-corrupt", lambda: put(f"runs/s2/trials/{parse_trial(trial()).trial_id()}/status.json", "{")
     and sweep({}),
     "status.json: not a readable status file", False),
]


def listing(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`: file bytes (None for a folder)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """tmp_path/box as the cwd, with a finished trial (runs/trials/<id>) and a finished sweep (runs/s) whose files
    must come through every case unchanged."""
    box = tmp_path / "box"
    box.mkdir()
    monkeypatch.chdir(box)
    done = trial(seed=99)
    for root in ("runs", "runs/s"):
        put(f"{root}/{MARKER}", Path(root).name + "\n")  # heurbench's folders, as it marks them
        t = Path(root) / "trials" / parse_trial(done).trial_id()
        put(str(t / "status.json"), json.dumps({"state": "done", "iteration": 16, "total": 16}))
        put(str(t / "config.yaml"), done)
        put(str(t / "ckpt" / "last.pt"), b"finished checkpoint bytes")
        put(f"{root}/metrics/{t.name}/part-00000.parquet", b"finished metrics bytes")
    return box


def check(tmp_path: Path, before: dict, code: int, err: str, expect: str, runs_written: bool) -> None:
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("heurbench: error: "), err
    assert expect in lines[0], lines[0]
    assert code == 2, (code, err)
    after = listing(tmp_path)
    changed = {p for p in set(before) | set(after) if before.get(p, 0) != after.get(p, 0)}
    outside = {p for p in changed if not p.startswith(os.path.join("box", "runs") + os.sep)}
    assert not outside, f"written outside the output folder: {sorted(outside)}"
    damaged = {p for p in changed if p in before}
    assert not damaged, f"damaged: {sorted(damaged)}"
    if not runs_written:
        assert not changed, f"a validation error wrote {sorted(changed)}"
    assert not (tmp_path / "box" / "marker").exists(), "a pickle ran code"


PARAMS = [pytest.param(*c.values, marks=c.marks, id=c.values[0]) if hasattr(c, "marks") else pytest.param(*c, id=c[0])
          for c in CASES]


@pytest.mark.parametrize("case, argv, expect, runs_written", PARAMS)
def test_bad_input_is_one_line_and_writes_nothing_outside(sandbox, tmp_path, capsys, case, argv, expect,
                                                          runs_written):
    args = argv()
    before = listing(tmp_path)
    code = main(["-q", *args])
    check(tmp_path, before, code, capsys.readouterr().err, expect, runs_written)


@pytest.mark.parametrize("case", ["name-dotdot-path", "cifar-pickle-payload"])
def test_bad_input_in_a_fresh_process(sandbox, tmp_path, case):
    """The console script itself (logging to stderr, no pytest capture): still one line, exit 2."""
    _, argv, expect, runs_written = next(c.values for c in PARAMS if c.id == case)
    args = argv()
    before = listing(tmp_path)
    r = subprocess.run([sys.executable, "-m", "heurbench.cli", "-q", *args], capture_output=True, text=True)
    check(tmp_path, before, r.returncode, r.stderr, expect, runs_written)


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


@contextlib.contextmanager
def filesystem(kind: str, folder: Path, monkeypatch):
    """`folder` as a read-only bind mount (kind 'ro') or a 256 KiB tmpfs ('full'). Where this machine cannot mount
    (a container without CAP_SYS_ADMIN; root ignores chmod), writes under `folder` fail at the write layer
    (harness.storage) with the error that filesystem would give: EROFS for every file, ENOSPC for the large ones
    (checkpoints)."""
    folder.mkdir(parents=True, exist_ok=True)
    f = str(folder)
    steps = {"ro": [["mount", "--bind", f, f], ["mount", "-o", "remount,ro,bind", f]],
             "full": [["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", f]]}[kind]
    mounted = 0
    for step in steps:
        if subprocess.run(step, capture_output=True).returncode:
            break
        mounted += 1
    if mounted < len(steps):
        import harness.storage

        code = errno.EROFS if kind == "ro" else errno.ENOSPC
        real = harness.storage.tempfile.mkstemp

        def refuse(*a, dir=None, **kw):
            big = kw.get("prefix", "").endswith(".pt.")
            if Path(dir).resolve().is_relative_to(folder.resolve()) and (kind == "ro" or big):
                raise OSError(code, os.strerror(code), str(dir))
            return real(*a, dir=dir, **kw)
        monkeypatch.setattr(harness.storage.tempfile, "mkstemp", refuse)
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", f], check=True)


def status_of(d: dict) -> dict:
    return json.loads((trial_files(d) / "status.json").read_text())


@pytest.mark.parametrize("kind, folder, expect", [
    ("ro", "runs/metrics", "Read-only file system (the output folder is on a read-only filesystem"),
    ("full", "runs/trials", "No space left on device ("),
])
def test_an_unwritable_folder_fails_the_trial_in_one_line(sandbox, capsys, monkeypatch, kind, folder, expect):
    """A read-only metrics folder or a full disk under the trial: one line naming the file (and the free space),
    exit 1, and status.json `failed` with that reason."""
    d = trial(seed=7)
    with filesystem(kind, Path(folder), monkeypatch):
        code = main(["-q", *train(d)])
        err = capsys.readouterr().err
        status = status_of(d)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"heurbench: error: [Errno {errno.EROFS if kind == 'ro' else errno.ENOSPC}] "), err
    assert expect in lines[0] and f"cannot write runs/{'metrics' if kind == 'ro' else 'trials'}/" in lines[0], err
    if kind == "full":
        assert re.search(r"\(\d+(\.\d)? (B|KiB|MiB|GiB) free of \d+\.\d (KiB|MiB|GiB) on that filesystem\)",
                         lines[0]), lines[0]
    assert status["state"] == "failed" and status["reason"] == "OSError: " + lines[0].removeprefix("heurbench: error: ")


def test_a_read_only_output_folder_is_one_line(sandbox, capsys, monkeypatch):
    with filesystem("ro", Path("runs"), monkeypatch):
        code = main(["-q", *train(trial(seed=8))])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Read-only file system" in err, err


def test_torch_save_on_a_full_disk_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    """torch.save reports a full disk as RuntimeError('... unexpected pos ...'): with (almost) no space left it
    becomes the ENOSPC line; with space left the RuntimeError stands."""
    import harness.storage as storage

    def save(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed; unexpected pos 64 vs 0")
    monkeypatch.setattr(storage, "free_bytes", lambda folder: 0)
    with pytest.raises(OSError, match=r"\[Errno 28\] cannot write .*x\.pt: No space left on device \(.* free of "):
        storage.atomic_write(tmp_path / "x.pt", save)
    monkeypatch.setattr(storage, "free_bytes", lambda folder: 10 * storage.FULL)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        storage.atomic_write(tmp_path / "x.pt", save)
    assert list(tmp_path.iterdir()) == []


def test_results_load_of_a_tree_whose_config_yaml_holds_a_python_tag_is_one_line(sandbox):
    from harness.errors import ConfigError
    from heurbench import results

    config = next(Path("runs/s/trials").glob("*/config.yaml"))
    config.write_text(TAG + "\n")
    put("runs/s/sweep.yaml", {"name": "s", "points": []})
    with pytest.raises(ConfigError, match=r"config.yaml: line 1 not valid YAML \(could not determine a constructor"):
        results.load("runs/s")
    assert not Path("marker").exists()
