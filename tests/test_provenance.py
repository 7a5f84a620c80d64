"""harness.provenance per trial: versions, devices, SLURM and Ray ids, start and end in status.json (kept by a
resume and by a failure), as provenance.* columns of heurbench.results.load, and the report's 'What it ran on'."""
import json
import logging
import sys
from datetime import datetime
from types import SimpleNamespace

import pytest
import torch
import yaml

from harness import provenance
from harness.config import parse_trial
from harness.layout import RunDir
from harness.storage import write_json, write_parquet

CPU = torch.device("cpu")


def test_environment_records_versions_devices_and_slurm_ids(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "40")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    env = provenance.environment(CPU)
    assert (env["slurm_job_id"], env["slurm_array_job_id"], env["slurm_array_task_id"]) == ("41", "40", "3")
    assert env["torch"] == torch.__version__ and env["cudnn"] == torch.backends.cudnn.version()
    assert env["nccl"] is None if not torch.cuda.is_available() else env["nccl"].count(".") == 2
    assert env["device_count"] == 1 and env["devices"] == [env["device"].removeprefix("cpu: ")]
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    assert "slurm_array_job_id" not in provenance.environment(CPU)


def test_ray_node_only_where_ray_is_initialised_and_ray_is_never_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert "ray_node" not in provenance.environment(CPU) and "ray" not in sys.modules
    ray = SimpleNamespace(is_initialized=lambda: False,
                          get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "n1"))
    monkeypatch.setitem(sys.modules, "ray", ray)
    assert "ray_node" not in provenance.environment(CPU)
    ray.is_initialized = lambda: True
    assert provenance.environment(CPU)["ray_node"] == "n1"


def test_a_resume_keeps_the_first_start_and_counts_itself():
    fresh = provenance.started({"torch": "x"}, None)
    assert fresh["resumed"] == 0 and datetime.fromisoformat(fresh["started"]).utcoffset().total_seconds() == 0
    again = provenance.started({"torch": "y"}, {"provenance": {**fresh, "resumed": 2}})
    assert again == {"torch": "y", "started": fresh["started"], "resumed": 3}
    old = provenance.started({}, {"provenance": {}})  # a checkpoint written before provenance had a start
    assert old["resumed"] == 1 and old["started"]
    end = provenance.ended(again)
    assert datetime.fromisoformat(end["ended"]) >= datetime.fromisoformat(end["started"])


def test_columns_are_flat_and_a_resume_warns_of_cudnn_and_nccl(caplog):
    p = {"torch": "2", "devices": ["a", "b"], "device_count": 2, "components": {"model:m": {}}}
    assert provenance.columns(p) == {"provenance.torch": "2", "provenance.devices": "a, b",
                                     "provenance.device_count": 2}
    with caplog.at_level("WARNING", logger="heurbench.train"):
        lines = provenance.warn_if_changed("t", {"cudnn": 1, "nccl": "2.1.0"}, {"cudnn": 2, "nccl": "2.1.0"})
    assert lines == ["cudnn: 1 -> 2"] and len(caplog.records) == 1


def test_a_failed_trial_keeps_its_provenance_with_its_end(trial_dict, tmp_path):
    from harness.runner import mark_failed

    cfg = parse_trial(trial_dict)
    trial = RunDir(tmp_path).trial(cfg.trial_id())
    write_json(trial.status, {"state": "running", "provenance": {"torch": "2", "started": "2024-01-01T00:00:00+00:00"}})
    mark_failed(tmp_path, [cfg], RuntimeError("boom"))
    status = trial.read_status()
    assert status["state"] == "failed" and status["provenance"]["torch"] == "2" and status["provenance"]["ended"]


def test_a_real_trial_records_its_start_and_end_and_results_load_gives_the_columns(trial_dict, tmp_path):
    from harness.train import run_trial
    from heurbench import results

    cfg = parse_trial(trial_dict)
    out = tmp_path / "s"
    assert run_trial(cfg, out) == "done"
    trial = RunDir(out).trial(cfg.trial_id())
    status = trial.read_status()
    first = status["provenance"]
    assert first["resumed"] == 0 and first["ended"] >= first["started"] and first["device"].startswith("cpu")
    assert torch.load(trial.last, weights_only=True)["provenance"]["started"] == first["started"]
    status["state"] = "running"  # interrupted: it resumes from last.pt
    trial.status.write_text(json.dumps(status))
    assert run_trial(cfg, out, resume=True) == "done"
    again = trial.read_status()["provenance"]
    assert again["started"] == first["started"] and again["resumed"] == 1 and again["ended"] >= first["ended"]
    df = results.load(out)
    assert (df["provenance.torch"] == torch.__version__).all() and (df["provenance.resumed"] == 1).all()
    assert df["provenance.devices"].iloc[0] == ", ".join(again["devices"]) and "provenance.components" not in df


def test_the_report_says_what_the_sweep_ran_on_and_warns_of_different_torch(tmp_path, caplog):
    """Three trials of one sweep, two on torch 2.3 and one on 2.4, and one not started: a table per distinct
    environment and one warning naming torch and its values."""
    from analysis.report import Report, ran_on

    run = RunDir(tmp_path / "x")
    run.path.mkdir()
    ids = ["a", "b", "c", "d"]
    run.sweep_yaml.write_text(yaml.safe_dump({"name": "x", "base": {"seed": 0},
                                              "points": [{"index": i, "trial_id": t, "values": {}}
                                                         for i, t in enumerate(ids)]}))
    env = {"heurbench": "0.1.0", "commit": "abc", "cuda": "12.1", "cudnn": 8902, "nccl": "2.18.1",
           "device": "cuda: H100", "device_count": 1}
    for t, torch_version, host in zip(ids[:3], ("2.3.0", "2.3.0", "2.4.0"), ("n1", "n2", "n1")):
        write_parquet(run.metrics_part(t, 0), [{"trial_id": t, "iteration": 0}])
        write_json(run.trial(t).status, {"state": "done", "provenance": {**env, "torch": torch_version, "host": host}})
    r = Report(run.path)
    with caplog.at_level(logging.WARNING, logger="heurbench.analysis"):
        table = ran_on(r)
    assert table[["torch", "hosts", "trials"]].values.tolist() == [["2.3.0", 2, 2], ["2.4.0", 1, 1]]
    assert [rec.getMessage() for rec in caplog.records] == [
        "sweep x: its trials ran on more than one torch: 2.3.0 (2 of 3 trials), 2.4.0 (1 of 3 trials)"]
    r.finish()
    md = run.report_md.read_text()
    assert "## What it ran on" in md and "1 of 4 trials recorded no provenance" in md
    assert ("**Warning**: this sweep's trials ran on more than one torch: 2.3.0 (2 of 3 trials), 2.4.0 (1 of 3 "
            "trials).") in md
    assert "What it ran on" in run.report_html.read_text()
