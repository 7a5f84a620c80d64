"""harness.layout: the one place that names the paths under a results root."""
import json
import subprocess
import sys

from harness.layout import RunDir, TrialDir, checkpoint_name, run_of_checkpoint, trial_of_checkpoint


def test_paths_of_a_run_and_a_trial(tmp_path):
    run = RunDir(tmp_path / "s3")
    t = run.trial("abc")
    assert t.path == tmp_path / "s3" / "trials" / "abc" and t.id == "abc"
    assert t.last == t.path / "ckpt" / "last.pt" and t.named(200) == t.path / "ckpt" / "iter=000200.pt"
    assert t.named(390, 30).name == "epoch=030.pt" and checkpoint_name(5) == "iter=000005.pt"
    assert run.metrics_part("abc", 3) == tmp_path / "s3" / "metrics" / "abc" / "part-00003.parquet"
    assert run.report_table("x") == tmp_path / "s3" / "analysis" / "report" / "x.parquet"
    assert run.figure("cca") == tmp_path / "s3" / "figures" / "cca.png"
    assert run.sibling("teacher").path == tmp_path / "teacher"


def test_listing_checkpoints_parts_and_status(tmp_path):
    t = TrialDir(tmp_path / "s" / "trials" / "abc")
    assert t.read_status() == {} and t.iterations() == []
    t.ckpt_dir.mkdir(parents=True)
    for name in ("iter=000010.pt", "iter=000002.pt", "epoch=001.pt", "last.pt"):
        (t.ckpt_dir / name).touch()
    t.status.write_text(json.dumps({"state": "done"}))
    assert t.iterations() == [2, 10] and [p.name for p in t.epoch_ckpts()] == ["epoch=001.pt"]
    assert t.read_status()["state"] == "done"
    run = RunDir(tmp_path / "s")
    for tid, n in (("abc", 0), ("abc", 1), ("abcd", 0)):  # another trial's id that starts the same is not ours
        run.metrics_of(tid).mkdir(parents=True, exist_ok=True)
        run.metrics_part(tid, n).touch()
    run.metrics_staged("abc").mkdir()  # a compaction's hidden folder is no trial
    assert sorted(run.metrics_parts("abc")) == [0, 1] and run.metrics_trials() == ["abc", "abcd"]


def test_the_run_of_a_checkpoint(tmp_path):
    ck = tmp_path / "runs" / "s1" / "trials" / "abc" / "ckpt" / "iter=000000.pt"
    assert run_of_checkpoint(ck).path == tmp_path / "runs" / "s1" and trial_of_checkpoint(ck) == "abc"
    derived = tmp_path / "runs" / "s1" / "derived" / "swa" / "swa-1.pt"
    assert run_of_checkpoint(derived).path == tmp_path / "runs" / "s1"
    loose = tmp_path / "elsewhere" / "model.pt"
    assert run_of_checkpoint(loose).path == tmp_path / "elsewhere" and trial_of_checkpoint(loose) == "elsewhere"


def test_layout_imports_nothing_heavy():
    code = "import harness.layout, sys; assert not {'torch', 'pandas', 'pyarrow'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
