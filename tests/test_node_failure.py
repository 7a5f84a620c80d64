"""A node lost mid-sweep on a real multi-node Ray cluster, simulated on this host: a head and a worker node, each
started with `ray start` (its own raylet, temp dir and ports, all on 127.0.0.1), one CPU each, so the sweep's two
trials train one per node. While the worker node's trial trains, every process of that node is SIGKILLed (as a
machine that dies). Tune retries the trial (harness.tune_driver.TRIAL_RETRIES) on the head node, it resumes from
its last.pt, and the metrics end as an uninterrupted run's: no row lost, none twice, the same values.

The two trials differ only in `eval.log_every` (progress lines), so each is the other's uninterrupted twin.
The cluster is this test's own (not the session's `ray_address`), and only its processes are killed at the end.
"""
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.grid import load_sweep
from harness.tune_driver import TRIAL_RETRIES

pytestmark = pytest.mark.slow

ITERS, EVERY = 32, 8
ROW_KEY = ["trial_id", "kind", "split", "iteration"]
SAME = ["epoch", "lr", "loss", "accuracy", "grad_norm", "weight_norm"]  # all but the timings
# Ray dials 127.0.0.1 in `ray start --address` as the host's outward IP (its loopback-to-host mapping), where a
# head on 127.0.0.1 does not listen; a worker node here runs `ray start` with that mapping off.
RAY_START_LOOPBACK = ("import sys; from ray._private import services; services.resolve_ip_for_localhost = str; "
                      "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()")
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "2000",
               "RAY_health_check_failure_threshold": "5"}  # a dead node is noticed in ~5 s, not ~15 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procs() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of every process on this host."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                out[int(d)] = (int(stat.rsplit(")", 1)[1].split()[1]), Path(f"/proc/{d}/cmdline").read_bytes())
            except (OSError, ValueError, IndexError):
                pass
    return out


def node_pids(temp_dir: str) -> set[int]:
    """A node's processes: those whose command line names its temp dir (raylet, agents, GCS), and their
    descendants (the workers, which rename themselves ray::...)."""
    table = procs()
    found = {pid for pid, (_, cmd) in table.items() if temp_dir.encode() in cmd}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= kids
        grew = bool(kids)
    return found


def listening(pids: set[int]) -> set[str]:
    """The IPs that processes `pids` listen on (TCP, from /proc; an IPv4-mapped IPv6 address as IPv4)."""
    inodes = set()
    for pid in pids:
        try:
            inodes |= {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            pass
    ips = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, state, inode = (line.split()[i] for i in (1, 3, 9))
            if state == "0A" and f"socket:[{inode}]" in inodes:  # 0A: LISTEN
                raw = b"".join(bytes.fromhex(local[i:i + 8])[::-1] for i in range(0, len(local) - 5, 8))
                ip = ipaddress.ip_address(raw)
                ips.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return ips


def kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ray_start(cmd: list[str], env: dict) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, f"{' '.join(cmd[-6:])}: {r.stderr[-1500:]}"  # Ray waits 30 s for a raylet to register


@pytest.fixture
def cluster():
    """(address, head temp dir, worker temp dir) of a 2-node cluster on 127.0.0.1; every process of it is
    SIGKILLed at the end, pass or fail (never `ray stop`, which would stop every Ray on the host)."""
    head, worker = tempfile.mkdtemp(prefix="hbh"), tempfile.mkdtemp(prefix="hbw")  # short: Unix socket paths
    address = f"127.0.0.1:{free_port()}"
    common = ["--num-cpus=1", "--disable-usage-stats", "--dashboard-agent-listen-port=0"]
    env = {**os.environ, **FAST_HEALTH, "RAY_AUTH_MODE": "token"}  # as `ray start --head` sets up; joiners need it
    try:
        ray_start(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={address.split(':')[1]}",
                   "--include-dashboard=false", f"--temp-dir={head}", *common],
                  {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})  # Ray's own switch for a loopback-only node
        ray_start([sys.executable, "-c", RAY_START_LOOPBACK, "start", f"--address={address}", f"--temp-dir={worker}",
                   *common], env)
        yield address, head, worker
    finally:
        kill(node_pids(worker) | node_pids(head))
        subprocess.run(["rm", "-rf", head, worker])


def statuses(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("trials/*/status.json")}


def holder(out: Path, tid: str):
    """The pid training trial `tid` (from its lock file; harness.lock), or None."""
    try:
        return json.loads((out / ".locks" / f"{tid}.lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_killed_worker_node_s_trial_is_retried_and_resumes_with_no_row_lost_or_twice(trial_dict, tmp_path,
                                                                                      cluster):
    address, head_dir, worker_dir = cluster
    t0 = time.time()
    assert listening(node_pids(head_dir) | node_pids(worker_dir)) == {"127.0.0.1"}

    trial_dict.update(budget={"iterations": ITERS}, eval={"every": EVERY, "unit": "iteration", "train_stride": 2})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": trial_dict, "grid": {"eval.log_every": [8, 9]}}))
    ids = [p.trial_id for p in load_sweep(path).points]
    out = tmp_path / "runs" / "s"
    log = tmp_path / "driver.log"
    with open(log, "w") as fh:
        driver = subprocess.Popen([sys.executable, "-m", "heurbench.cli", "sweep", str(path), "--out",
                                   str(tmp_path / "runs"), "--address", address], stdout=fh, stderr=subprocess.STDOUT,
                                  start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "token"})
    try:
        victim, at = None, None
        deadline = time.time() + 240
        while at is None and time.time() < deadline and driver.poll() is None:
            on_worker = node_pids(worker_dir)
            victim = next((t for t in ids if holder(out, t) in on_worker), None)
            it = statuses(out).get(victim, {}).get("iteration", 0) if victim else 0
            if it >= EVERY:  # a last.pt exists, the trial is mid-way
                kill(on_worker)
                at = it
            time.sleep(0.2)
        assert at is not None and at < ITERS, (victim, statuses(out), log.read_text()[-3000:])
        assert driver.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    wall = time.time() - t0
    text = log.read_text()
    twin = next(t for t in ids if t != victim)

    assert not node_pids(worker_dir)  # the node stayed dead: the retry ran on the head
    st = statuses(out)
    assert st[victim]["state"] == st[twin]["state"] == "done", st
    assert f"trial {victim} (point {ids.index(victim)}) lost its process or node" in text and "retry 1/" in text
    resumed = [int(line.split("resuming at iteration ")[1].split("/")[0]) for line in text.splitlines()
               if f"trial {victim} resuming at iteration" in line]
    assert resumed and resumed[0] >= at and resumed[0] % EVERY == 0, text[-3000:]

    df = pd.read_parquet(out / "metrics")
    dup = int(df.duplicated(ROW_KEY).sum())
    mine, ref = (df[df.trial_id == t].sort_values(ROW_KEY[1:]).reset_index(drop=True) for t in (victim, twin))
    evals = list(range(EVERY, ITERS + 1, EVERY))
    assert sorted(ref[ref.kind == "step"].iteration) == list(range(0, ITERS, 2))
    assert all(sorted(g.iteration) == evals for _, g in ref[ref.kind == "eval"].groupby("split"))
    expected = len(ref)  # the uninterrupted twin's rows: a step row every 2 iterations, each split at each eval
    print(f"node failure: killed at iteration {at}, resumed at {resumed[0]}, retries {len(resumed)}, rows "
          f"expected {expected} found {len(mine)} (twin {len(ref)}), duplicates {dup}, wall {wall:.0f} s")
    assert dup == 0
    assert mine[ROW_KEY[1:]].equals(ref[ROW_KEY[1:]])
    pd.testing.assert_frame_equal(mine[SAME], ref[SAME], check_exact=True)  # a resume is bit-identical


def test_the_local_cluster_is_on_loopback_only(ray_address):
    """The session cluster, started as the sweep driver starts one (harness.tune_driver.init_ray)."""
    import ray

    assert ray_address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    session = ray._private.worker._global_node.get_session_dir_path()
    assert listening(node_pids(session) | {os.getpid()}) == {"127.0.0.1"}
