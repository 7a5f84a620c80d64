"""`heurbench slurm submit` against a real SLURM (slurmctld + slurmd on this host, see .ci/slurm-up.sh):
job arrays, a job cancelled mid-run and resubmitted (it resumes), Ray-on-SLURM, and DDP under srun.

Without a reachable SLURM these tests skip, unless CI is set: then they fail.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.grid import load_sweep
from slurm.launch import ENDED, job_states

REPO = Path(__file__).resolve().parents[1]
PARTITION = os.environ.get("HEURBENCH_SLURM_PARTITION", "debug")
ROW_KEY = ["trial_id", "kind", "split", "iteration"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def slurm_up():
    ok = shutil.which("sinfo") and subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%t"], capture_output=True,
                                                   text=True).stdout.strip() not in ("", "down", "drain")
    if not ok:
        why = f"no SLURM partition {PARTITION!r} reachable (sinfo); start one with: bash .ci/slurm-up.sh"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)


@pytest.fixture
def trial_dict(trial_dict):
    """conftest's tiny trial, with the budget and logging cadence these tests count on."""
    trial_dict.update(budget={"iterations": 16}, eval={"every": 8, "unit": "iteration", "train_stride": 2,
                                                        "log_every": 8})
    return trial_dict


def write_sweep(tmp_path, base, **spec):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": base, **spec}))
    return path


def submit(path, out, *extra, wait=True):
    cmd = [sys.executable, "-m", "heurbench.cli", "slurm", "submit", str(path), "--partition", PARTITION,
           "--time", "15", "--out", str(out), *extra] + (["--wait"] if wait else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[0])["jobs"]


def statuses(out):
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("trials/*/status.json")}


def job_logs(out):
    return "".join(p.read_text() for p in out.glob(".submitit/*/*.err"))


def check_results(out, sweep, iterations):
    st = statuses(out)
    assert {p.trial_id for p in sweep.points} == set(st)
    assert all(s["state"] == "done" and s["iteration"] == iterations for s in st.values()), st
    df = pd.read_parquet(out / "metrics")
    assert set(df.trial_id) == set(st) and not df.duplicated(ROW_KEY).any()
    for tid in st:
        assert sorted(df[(df.trial_id == tid) & (df.kind == "step")].iteration) == list(range(0, iterations, 2))
    return df


def test_array_mode_runs_every_trial_as_a_slurm_job(trial_dict, tmp_path):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02]}, seeds=[0])
    submit(path, tmp_path / "runs")
    df = check_results(tmp_path / "runs" / "s", load_sweep(path), 16)
    assert set(df["optim.lr"]) == {0.01, 0.02} and (df.world_size == 1).all()
    assert submit(path, tmp_path / "runs") == []  # all finished: nothing to submit


LONG = 400  # iterations: enough that a trial is still running when a signal sent at iteration 16 lands


def start_long_trial(trial_dict, tmp_path, iterations=LONG):
    """Submit one trial without waiting; return (job id, sweep path, out) once it has a checkpoint at >= 16."""
    trial_dict["budget"] = {"iterations": iterations}
    path = write_sweep(tmp_path, trial_dict)
    out = tmp_path / "runs" / "s"
    (job,) = submit(path, tmp_path / "runs", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not any(s.get("iteration", 0) >= 16 for s in statuses(out).values()):
        time.sleep(0.5)
    return job, path, out


def wait_for(job):
    while any(s not in ENDED for s in job_states([job])):
        time.sleep(1)


def test_cancelled_job_resumes_from_its_checkpoint_when_resubmitted(trial_dict, tmp_path):
    job, path, out = start_long_trial(trial_dict, tmp_path)
    subprocess.run(["scancel", job], check=True)
    wait_for(job)
    (before,) = statuses(out).values()
    assert before["state"] == "running" and 16 <= before["iteration"] < LONG, before
    (first_part,) = (out / "metrics").glob("*/part-00000.parquet")
    written = pd.read_parquet(first_part)

    submit(path, tmp_path / "runs")
    check_results(out, load_sweep(path), LONG)
    assert f"resuming at iteration {before['iteration']}/{LONG}" in job_logs(out)
    kept = pd.read_parquet(first_part)  # the trial's parts, compacted into one when it ended
    pd.testing.assert_frame_equal(kept.iloc[:len(written)], written)  # rows before the checkpoint kept, not redone


def test_timeout_signal_requeues_the_job_which_resumes(trial_dict, tmp_path):
    """USR2 is what SLURM sends 90 s before the time limit (submitit's --signal); the job requeues itself."""
    job, path, out = start_long_trial(trial_dict, tmp_path)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    deadline = time.time() + 60
    while job_states([job]) != ["PENDING"] and time.time() < deadline:
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)  # skip SLURM's requeue hold
    wait_for(job)
    check_results(out, load_sweep(path), LONG)
    logs = job_logs(out)
    assert "Requeued job" in logs and "resuming at iteration" in logs


def test_ray_mode_runs_the_tune_sweep_inside_one_allocation(trial_dict, tmp_path):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02]})
    submit(path, tmp_path / "runs", "--mode", "ray")
    check_results(tmp_path / "runs" / "s", load_sweep(path), 16)
    assert "2/2 finished" in job_logs(tmp_path / "runs" / "s")


def test_array_template_by_hand(trial_dict, tmp_path):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02]})
    subprocess.run(["sbatch", "--wait", "--array=0-1", f"--partition={PARTITION}", "--gpus-per-node=0",
                    "--cpus-per-task=1", "--time=10", f"--output={tmp_path}/%A_%a.out",
                    str(REPO / "slurm" / "array.sbatch"), str(path), str(tmp_path / "runs")], check=True, timeout=300, capture_output=True)
    check_results(tmp_path / "runs" / "s", load_sweep(path), 16)


def test_trial_runs_as_two_ddp_ranks_under_srun(trial_dict, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump(trial_dict))
    subprocess.run(["srun", "-p", PARTITION, "-n", "2", "-t", "10", sys.executable, "-m", "harness.runner", str(cfg),
                    str(tmp_path / "out")], check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    df = pd.read_parquet(tmp_path / "out" / "metrics")
    assert (df.world_size == 2).all() and not df.duplicated(ROW_KEY).any()
    assert df[df.kind == "step"].iteration.tolist() == list(range(0, 16, 2))
