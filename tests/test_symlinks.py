"""Planted symbolic links and folders heurbench did not make, through the real CLI on a real finished sweep.

Each case copies a finished two-trial sweep (`runs/s`, checkpoints at iterations 8 and 16), plants one link (or
a foreign folder), runs one command and asserts: exit 2, one line `heurbench: error: ...` naming the path, and
a folder outside the results root (`outside/`) byte-for-byte as it was (a checksum of every path, file and link
target), including a file a link points at, which the lock open used to truncate.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import BASE_TRIAL
from harness.confine import MARKER
from heurbench.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A folder holding s.yaml and runs/s: the sweep trained by `heurbench sweep trial` (no Ray needed)."""
    base = tmp_path_factory.mktemp("finished")
    cfg = copy.deepcopy(BASE_TRIAL)
    cfg["checkpoints"] = {"iterations": [8]}
    (base / "s.yaml").write_text(yaml.safe_dump({"name": "s", "base": cfg, "grid": {"optim.lr": [0.02, 0.05]}}))
    for i in "01":
        assert main(["-q", "sweep", "trial", str(base / "s.yaml"), "--index", i, "--out", str(base / "runs")]) == 0
    return base


@pytest.fixture
def box(finished, tmp_path, monkeypatch) -> Path:
    """A copy of the finished sweep as the cwd, and outside/ beside runs/ holding a file and a sweep of its own."""
    shutil.copytree(finished, tmp_path / "box", symlinks=True)
    outside = tmp_path / "box" / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("not heurbench's\n")
    shutil.copytree(tmp_path / "box" / "runs" / "s", outside / "s", symlinks=True)
    monkeypatch.chdir(tmp_path / "box")
    return tmp_path / "box"


def checksum(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        h.update(os.readlink(p).encode() if p.is_symlink() else p.read_bytes() if p.is_file() else b"/")
    return h.hexdigest()


def trials() -> list[Path]:
    point = {p["index"]: p["trial_id"] for p in yaml.safe_load(Path("runs/s/sweep.yaml").read_text())["points"]}
    return [Path("runs/s/trials") / point[i] for i in sorted(point)]


def plant(link: str, target: Path) -> None:
    """`link` (under runs/) replaced by a symbolic link to `target`."""
    path = Path(link)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target.resolve())


def refused(box: Path, capsys, argv: list[str], *expect: str) -> str:
    before = checksum(box / "outside")
    code = main(["-q", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("heurbench: error: "), (code, err)
    assert "Traceback" not in err and all(e in err for e in expect), err
    assert checksum(box / "outside") == before, "something outside the results root changed"
    return err


def rerun_point(i: int = 0) -> list[str]:
    return ["sweep", "trial", "s.yaml", "--index", str(i), "--out", "runs"]


def unfinished(trial: Path) -> None:
    """The trial as a killed run leaves it: running, with its last.pt (so the next run resumes it)."""
    status = json.loads((trial / "status.json").read_text())
    (trial / "status.json").write_text(json.dumps({**status, "state": "running"}))


def test_a_trial_folder_linked_outside_is_neither_resumed_nor_trained_into(box, capsys):
    first = trials()[0]
    plant(str(first), box / "outside" / "s" / "trials" / first.name)
    unfinished(box / "outside" / "s" / "trials" / first.name)  # so resuming would write there
    before = checksum(box / "outside")
    refused(box, capsys, rerun_point(), str(first), "symbolic link")
    refused(box, capsys, ["train", str(box / "outside" / "s" / "trials" / first.name / "config.yaml"),
                          "--out", "runs/s", "--resume"], "symbolic link")
    assert checksum(box / "outside") == before


@pytest.mark.parametrize("folder", ["figures", "analysis"])
def test_analyze_does_not_write_through_a_linked_results_folder(box, capsys, folder):
    (box / "outside" / "sink").mkdir()
    plant(f"runs/s/{folder}", box / "outside" / "sink")
    a, b = (t / "ckpt" / "iter=000008.pt" for t in trials())
    refused(box, capsys, ["analyze", "cca", str(a), str(b), "--inputs", "100"], f"runs/s/{folder}", "symbolic link")
    assert not any((box / "outside" / "sink").iterdir())


@pytest.mark.parametrize("lock", ["sweep", "trial"])
def test_a_lock_linked_to_an_outside_file_is_not_opened(box, capsys, lock):
    first = trials()[0]
    path = "runs/s/.lock" if lock == "sweep" else f"runs/s/.locks/{first.name}.lock"
    plant(path, box / "outside" / "precious.txt")
    unfinished(first)
    argv = ["sweep", "s.yaml", "--out", "runs", "--num-cpus", "1"] if lock == "sweep" else rerun_point()
    refused(box, capsys, argv, path, "symbolic link")
    assert (box / "outside" / "precious.txt").read_text() == "not heurbench's\n"


def test_a_reference_through_a_link_leaving_the_root_is_not_read(box, capsys):
    plant("runs/link", box / "outside" / "s")
    cfg = copy.deepcopy(BASE_TRIAL)
    cfg["model"]["init_from"] = "@link:0:last.pt"
    Path("t.yaml").write_text(yaml.safe_dump(cfg))
    refused(box, capsys, ["train", "t.yaml", "--out", "runs/s"], "@link:0:last.pt", "symbolic link")


def test_links_that_stay_inside_the_sweep_are_followed(box, capsys):
    """A link from one place in the sweep to another (a user's own figures/ -> analysis/figs) is not an escape."""
    Path("runs/s/analysis/figs").mkdir(parents=True)
    plant("runs/s/figures", Path("runs/s/analysis/figs"))
    a, b = (t / "ckpt" / "iter=000008.pt" for t in trials())
    assert main(["-q", "analyze", "cca", str(a), str(b), "--inputs", "100"]) == 0
    assert any(Path("runs/s/analysis/figs").glob("cca-*-heatmap.png"))


def test_a_folder_heurbench_did_not_make_is_never_written(box, capsys):
    foreign = Path("runs/s2")
    foreign.mkdir()
    (foreign / "sweep.yaml").write_text("name: s2\nsomeone: else\n")
    (foreign / "notes.txt").write_text("mine\n")
    spec = yaml.safe_load(Path("s.yaml").read_text())
    Path("s2.yaml").write_text(yaml.safe_dump({**spec, "name": "s2"}))
    before = {p.name: p.read_bytes() for p in foreign.iterdir()}
    refused(box, capsys, ["sweep", "trial", "s2.yaml", "--index", "0", "--out", "runs"], "runs/s2",
            "not a heurbench sweep folder", f"echo s2 > {foreign.resolve() / MARKER}")
    refused(box, capsys, ["sweep", "s2.yaml", "--out", "runs", "--num-cpus", "1"], "not a heurbench sweep folder")
    assert {p.name: p.read_bytes() for p in foreign.iterdir()} == before
    (foreign / MARKER).write_text("other\n")  # another sweep's
    refused(box, capsys, ["sweep", "trial", "s2.yaml", "--index", "0", "--out", "runs"], "sweep 'other'")
    (foreign / MARKER).write_text("s2\n")  # adopted, as the first error says
    assert main(["-q", "sweep", "trial", "s2.yaml", "--index", "0", "--out", "runs"]) == 0
    assert (foreign / "notes.txt").read_text() == "mine\n"


def test_resume_from_another_trials_checkpoint_is_refused_naming_both(box, capsys):
    first, second = trials()
    shutil.copy(second / "ckpt" / "last.pt", first / "ckpt" / "last.pt")
    unfinished(first)
    rows = sorted(Path("runs/s/metrics").rglob("*.parquet"))
    before = {p: p.read_bytes() for p in rows}
    refused(box, capsys, rerun_point(), f"a checkpoint of trial {second.name}", f"this trial {first.name}")
    assert {p: p.read_bytes() for p in rows} == before  # no row of the other trial mixed in
