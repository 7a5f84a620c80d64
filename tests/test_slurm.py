"""`heurbench slurm submit` against a real SLURM (slurmctld + slurmd on this host, see .ci/slurm-up.sh):
job arrays, a job cancelled mid-run and resubmitted (it resumes), Ray-on-SLURM, and DDP under srun.

Without a reachable SLURM these tests skip, unless CI is set: then they fail.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import lock
from harness.grid import load_sweep
from harness.layout import RunDir
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


def test_a_plain_module_plugin_reaches_the_array_jobs(trial_dict, tmp_path):
    """`plugins:` beside the sweep YAML: the submitting process puts its folder on PYTHONPATH, which sbatch
    passes to the job (SLURM exports the submitter's environment), and the job imports it with the config."""
    from test_plugins import check_halved, plain_plugin_sweep

    path = plain_plugin_sweep(tmp_path, trial_dict)
    submit(path, tmp_path / "runs")
    check_halved(tmp_path / "runs" / "s", trial_dict["optim"]["lr"])


LONG = 240  # iterations of batch 10 of the two-node test's trials
SIGNALLED = 1000  # iterations of batch 10 (~5 s on CI's machine, where 240 once ended before scancel landed): a
# trial is still running when a signal sent once it has passed iteration 16 lands


def start_long_trial(trial_dict, tmp_path):
    """Submit one trial without waiting; return (job id, sweep path, out) once it has a checkpoint at >= 16."""
    trial_dict["budget"] = {"iterations": SIGNALLED}
    trial_dict["data"].update(train_subset=200, test_subset=50, batch_size=10)
    trial_dict["eval"]["every"] = 16
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
    (tid,) = statuses(out)
    with lock.hold(RunDir(out).trial(tid).lock, "the cancelled trial", wait=60):  # its process has exited: SLURM
        (before,) = statuses(out).values()  # reports the job cancelled while the step still runs (up to KillWait)
    assert before["state"] == "running" and 16 <= before["iteration"] < SIGNALLED, before
    (first_part,) = (out / "metrics").glob("*/part-00000.parquet")
    written = pd.read_parquet(first_part)

    submit(path, tmp_path / "runs")
    check_results(out, load_sweep(path), SIGNALLED)
    assert f"resuming at iteration {before['iteration']}/{SIGNALLED}" in job_logs(out)
    kept = pd.read_parquet(first_part)  # the trial's parts, compacted into one when it ended
    pd.testing.assert_frame_equal(kept.iloc[:len(written)], written)  # rows before the checkpoint kept, not redone


def test_timeout_signal_requeues_the_job_which_resumes(trial_dict, tmp_path):
    """USR2 is what SLURM sends 90 s before the time limit (submitit's --signal); the job requeues itself."""
    job, path, out = start_long_trial(trial_dict, tmp_path)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    deadline = time.time() + 60
    while job_states([job]) != ["PENDING"] and time.time() < deadline:
        time.sleep(0.5)
    # Skip most of SLURM's requeue hold, not all of it: a restart 0.45 s after the requeue, while the old step was
    # still ending, was killed by slurmctld ("Killing non-startable batch JobId=21: Job credential revoked").
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now+3"], check=True)
    wait_for(job)
    check_results(out, load_sweep(path), SIGNALLED)
    logs = job_logs(out)
    assert "Requeued job" in logs and "resuming at iteration" in logs


MULTI = os.environ.get("HEURBENCH_SLURM_MULTI_PARTITION", "multi")  # two nodes (.ci/slurm-up.sh: two slurmd here)
EVERY = 16
SAME = ["epoch", "lr", "loss", "accuracy", "grad_norm", "weight_norm"]  # all but the timings
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
               "RAY_health_check_failure_threshold": "5"}  # the head's GCS notices a dead node in ~5 s, not ~15 s


def proc_table() -> dict[int, tuple[int, bytes, bytes]]:
    """pid -> (parent pid, command line, environment) of every process on this host."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                out[int(d)] = (int(stat.rsplit(")", 1)[1].split()[1]), Path(f"/proc/{d}/cmdline").read_bytes(),
                               Path(f"/proc/{d}/environ").read_bytes())
            except (OSError, ValueError, IndexError):
                pass
    return out


def env_of(environ: bytes, name: str):
    """Variable `name` of a /proc/<pid>/environ, or None."""
    return next((v.split(b"=", 1)[1].decode() for v in environ.split(b"\0") if v.startswith(name.encode() + b"=")),
                None)


def ray_node_pids(job: str, node: str) -> set[int]:
    """The Ray processes of SLURM job `job` on SLURM node `node`: the `ray start` that the job's task there runs
    (slurm.launch.RaySweepJob.worker) and its descendants (raylet, agents, the workers training trials)."""
    table = proc_table()
    found = {pid for pid, (_, cmd, env) in table.items() if b"ray\0start\0" in cmd
             and env_of(env, "SLURM_JOB_ID") == job and env_of(env, "SLURMD_NODENAME") == node}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        found |= kids
        grew = bool(kids)
    return found


def holder(out: Path, tid: str):
    """The pid training trial `tid` (from its lock file; harness.lock), or None."""
    try:
        return json.loads((out / ".locks" / f"{tid}.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def node_of(pid):
    """The SLURM node a process runs on (SLURMD_NODENAME, which Ray's raylets pass on to their workers), or None."""
    try:
        return env_of(Path(f"/proc/{pid}/environ").read_bytes(), "SLURMD_NODENAME") if pid else None
    except OSError:
        return None


def alloc_nodes(job: str) -> list[str]:
    """The nodes of a running job, first (task 0, the Ray head) first."""
    nodelist = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True).stdout.strip()
    if not nodelist or nodelist.startswith("("):
        return []
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True).stdout.split()


def test_ray_mode_over_two_nodes_retries_a_killed_node_s_trial_with_no_row_lost_or_twice(trial_dict, tmp_path):
    """`slurm submit --mode ray --nodes 2`: a Ray head on the first node, a Ray worker on the second, a trial on
    each. While the second node's trial trains, that node's Ray (its `ray start`, raylet and workers) is SIGKILLed;
    Tune retries the trial (harness.tune_driver.TRIAL_RETRIES) on the head node, it resumes from its last.pt, and
    its metrics end as its uninterrupted twin's (the grid differs only in eval.log_every): none lost, none twice.
    The trials use a plain plug-in module beside the sweep YAML (tests/test_plugins.py's halve_lr): it reaches the
    Ray head's and the worker node's processes, the retry included."""
    from test_plugins import HALVE, write_module

    nodes = subprocess.run(["sinfo", "-h", "-p", MULTI, "-N", "-o", "%N %t"], capture_output=True, text=True)
    up = [line.split()[0] for line in nodes.stdout.splitlines() if line.split()[1] in ("idle", "mix", "alloc")]
    if len(up) < 2:
        why = f"no SLURM partition {MULTI!r} with 2 nodes up (sinfo: {nodes.stdout!r}); start one: bash .ci/slurm-up.sh"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    t0 = time.time()
    trial_dict.update(budget={"iterations": LONG}, eval={"every": EVERY, "unit": "iteration", "train_stride": 2})
    trial_dict["data"].update(train_subset=200, test_subset=50, batch_size=10)
    write_module(tmp_path, "halve_lr", HALVE)
    trial_dict["heuristics"] = {"halve_lr": {}}
    path = write_sweep(tmp_path, trial_dict, grid={"eval.log_every": [EVERY, EVERY + 1]}, plugins=["halve_lr"])
    sweep = load_sweep(path)
    ids = [p.trial_id for p in sweep.points]
    out = tmp_path / "runs" / "s"
    r = subprocess.run([sys.executable, "-m", "heurbench.cli", "slurm", "submit", str(path), "--partition", MULTI,
                        "--nodes", "2", "--mode", "ray", "--time", "15", "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **FAST_HEALTH})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (job,) = json.loads(r.stdout.splitlines()[0])["jobs"]
    try:
        head = worker = victim = at = None
        placed, deadline = {}, time.time() + 150  # trial -> the node it first trained on
        while at is None and time.time() < deadline and not set(job_states([job])) & ENDED:
            head, worker = (alloc_nodes(job) + [None, None])[:2] if worker is None else (head, worker)
            placed.update({t: n for t in ids if t not in placed and (n := node_of(holder(out, t)))})
            victim = next((t for t, n in placed.items() if worker and n == worker), None)
            it = statuses(out).get(victim, {}).get("iteration", 0) if victim else 0
            if it >= 4 * EVERY and len(placed) == 2:  # a last.pt exists, mid-way; the twin trains too
                for pid in ray_node_pids(job, worker):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                at = it
            time.sleep(0.2)
        assert at is not None and at < LONG, (head, worker, placed, statuses(out), job_logs(out)[-3000:])
        assert sorted(placed.values()) == sorted([head, worker]), placed  # spread: a trial on each node
        retried_on, deadline = set(), time.time() + 180
        while any(s not in ENDED for s in job_states([job])) and time.time() < deadline:
            retried_on.add(node_of(holder(out, victim)))
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job])
    wall = time.time() - t0
    logs = job_logs(out)
    twin = next(t for t in ids if t != victim)
    assert retried_on - {None} == {head}, retried_on  # the node's Ray stayed dead: the retry ran on the head
    df = check_results(out, sweep, LONG)  # both done at LONG, a step row every 2 iterations, no row twice
    assert set(df[df.kind == "step"].lr) == {trial_dict["optim"]["lr"] / 2}  # the plug-in acted on every node
    assert f"trial {victim} (point {ids.index(victim)}) lost its process or node" in logs and "retry 1/" in logs
    assert "2/2 finished" in logs
    resumed = [int(line.split("resuming at iteration ")[1].split("/")[0]) for line in logs.splitlines()
               if f"trial {victim} resuming at iteration" in line]
    assert resumed and resumed[0] >= at and resumed[0] % EVERY == 0, logs[-3000:]
    dup = int(df.duplicated(ROW_KEY).sum())
    mine, ref = (df[df.trial_id == t].sort_values(ROW_KEY[1:]).reset_index(drop=True) for t in (victim, twin))
    evals = list(range(EVERY, LONG + 1, EVERY))
    assert all(sorted(g.iteration) == evals for _, g in ref[ref.kind == "eval"].groupby("split"))
    print(f"ray on 2 SLURM nodes ({head}, {worker}): node {worker} killed at iteration {at}, resumed at {resumed[0]} "
          f"on {head}, rows expected {len(ref)} found {len(mine)}, duplicates {dup}, wall {wall:.0f} s")
    assert dup == 0
    assert mine[ROW_KEY[1:]].equals(ref[ROW_KEY[1:]])
    pd.testing.assert_frame_equal(mine[SAME], ref[SAME], check_exact=True)  # a resume is bit-identical


def test_array_template_by_hand(trial_dict, tmp_path):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02]})
    r = subprocess.run(["sbatch", "--parsable", "--array=0-1", f"--partition={PARTITION}", "--gpus-per-node=0",
                        "--cpus-per-task=1", "--time=10", f"--output={tmp_path}/%A_%a.out",
                        str(REPO / "slurm" / "array.sbatch"), str(path), str(tmp_path / "runs")],
                       check=True, timeout=60, capture_output=True, text=True)
    wait_for(r.stdout.strip())  # squeue every second: sbatch --wait took ~30 s to notice the end of a 10 s array
    check_results(tmp_path / "runs" / "s", load_sweep(path), 16)


def test_trial_runs_as_two_ddp_ranks_under_srun(trial_dict, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(yaml.safe_dump(trial_dict))
    subprocess.run(["srun", "-p", PARTITION, "-n", "2", "-t", "10", sys.executable, "-m", "harness.runner", str(cfg),
                    str(tmp_path / "out")], check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    df = pd.read_parquet(tmp_path / "out" / "metrics")
    assert (df.world_size == 2).all() and not df.duplicated(ROW_KEY).any()
    assert df[df.kind == "step"].iteration.tolist() == list(range(0, 16, 2))
