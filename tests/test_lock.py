"""harness.lock: one holder per sweep and per trial folder, a one-line refusal naming the holder, waiting, a dead
holder's lock taken over at once (flock, and the pid-file mode for filesystems without flock); `heurbench sweep`
refused or waiting while another driver holds the sweep; two drivers started at once train each trial once."""
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from harness import confine, lock
from harness.errors import ConfigError, LockError
from harness.grid import load_sweep
from harness.layout import RunDir
from heurbench.cli import main

ROW_KEY = ["trial_id", "kind", "split", "iteration"]


@pytest.fixture(params=["flock", "file"])
def mode(request, monkeypatch):
    monkeypatch.setenv("HEURBENCH_LOCK", request.param)
    return request.param


def holder(path, seconds=60.0):
    """A separate process holding the lock at `path` for `seconds` (it prints 'held' once it has it)."""
    code = ("import sys, time\nfrom harness.lock import hold\n"
            "with hold(sys.argv[1], 'x'):\n    print('held', flush=True)\n    time.sleep(float(sys.argv[2]))\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_holder_is_refused_with_one_line_naming_the_first(tmp_path, mode):
    path = tmp_path / "run" / ".lock"
    p = holder(path)
    try:
        with pytest.raises(LockError) as err:
            with lock.hold(path, "sweep s", hint="wait with --wait"):
                pass
        msg = str(err.value)
        assert isinstance(err.value, ConfigError) and "\n" not in msg
        assert msg.startswith("sweep s is in use by host ") and f"pid {p.pid} since 20" in msg
        assert socket.gethostname() in msg and msg.endswith("wait with --wait")
    finally:
        p.kill()
        p.wait()


def test_waiter_gets_the_lock_when_the_holder_lets_go(tmp_path, mode):
    path = tmp_path / ".lock"
    p = holder(path, seconds=1.0)
    t0 = time.monotonic()
    with lock.hold(path, "sweep s", wait=30):
        assert p.poll() is not None or time.monotonic() - t0 > 0.3  # we did wait for it
        assert f'"pid": {os.getpid()}' in (path.read_text() if mode == "flock" else
                                           path.with_name(".lock.held").read_text())
    assert time.monotonic() - t0 < 20
    p.wait()


def test_lock_of_a_killed_process_is_taken_over_at_once(tmp_path, mode):
    path = tmp_path / ".lock"
    p = holder(path)
    p.send_signal(signal.SIGKILL)
    p.wait()
    t0 = time.monotonic()
    with lock.hold(path, "sweep s"):  # wait=0: no waiting, no manual clean-up
        pass
    assert time.monotonic() - t0 < 2


def test_lock_is_reentrant_in_a_process_and_free_after_the_outer_release(tmp_path, mode):
    path = tmp_path / ".lock"
    with lock.hold(path, "x"):
        with lock.hold_all([(path, "x"), (tmp_path / "b.lock", "b")]):
            pass
        code = "import sys\nfrom harness.lock import hold\nwith hold(sys.argv[1], 'x'):\n    pass\n"
        assert subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True).returncode != 0
    assert subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True).returncode == 0


def write_sweep(tmp_path, base, **spec):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": base, **spec}))
    return path


def test_sweep_refused_in_one_line_while_another_driver_holds_it(trial_dict, tmp_path, capsys):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02]})
    run = RunDir(tmp_path / "runs" / "s")
    confine.claim(run.path, "s")  # the first driver made it
    p = holder(run.lock)
    try:
        assert main(["sweep", str(path), "--out", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"heurbench: error: sweep s ({run.path}) is in use by host")
        assert f"pid {p.pid}" in err and "--wait SECONDS" in err
        t0 = time.monotonic()
        assert main(["sweep", str(path), "--out", str(tmp_path / "runs"), "--wait", "0.6"]) == 2
        assert time.monotonic() - t0 >= 0.6 and "(waited 0.6 s)" in capsys.readouterr().err
        assert not (run.path / "trials").exists()  # nothing ran
    finally:
        p.kill()
        p.wait()


def test_trial_held_elsewhere_waits_then_fails_without_marking_it_failed(trial_dict, tmp_path, monkeypatch):
    from harness.config import TrialConfig
    from harness.runner import run_point

    cfg = TrialConfig.model_validate(trial_dict)
    out = tmp_path / "runs" / "s"
    trial = RunDir(out).trial(cfg.trial_id())
    confine.claim(out, "s")
    trial.path.mkdir(parents=True)
    trial.status.write_text('{"state": "running", "iteration": 8}')
    monkeypatch.setattr(lock, "TRIAL_WAIT", 0.5)
    p = holder(trial.lock)
    try:
        with pytest.raises(LockError, match=rf"trial {cfg.trial_id()} .* is in use by host .* pid {p.pid} "
                                            r".*\(waited 0.5 s\); another process is training it"):
            run_point(cfg, out)
        assert trial.read_status() == {"state": "running", "iteration": 8}  # the holder's to write
    finally:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_two_drivers_at_once_train_each_trial_once(trial_dict, tmp_path, ray_address):
    path = write_sweep(tmp_path, trial_dict, grid={"optim.lr": [0.01, 0.02]})
    out = tmp_path / "runs" / "s"
    base = [sys.executable, "-m", "heurbench.cli", "sweep", str(path), "--out", str(tmp_path / "runs"),
            "--address", ray_address]
    drivers = [subprocess.Popen(base + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for extra in (["--wait", "0"], ["--wait", "300"])]
    results = [(d.wait(timeout=400), *d.communicate()) for d in drivers]
    codes = sorted(rc for rc, _, _ in results)
    assert codes in ([0, 0], [0, 2]), [r[2][-3000:] for r in results]
    ran = [err for rc, _, err in results if "2 to run" in err]
    assert len(ran) == 1, [r[2][-3000:] for r in results]  # exactly one driver trained the trials
    for rc, _, err in results:
        if err is ran[0]:
            assert rc == 0
        elif rc == 0:  # it waited for the first and found everything finished
            assert "2 already finished, 0 to run" in err
        else:
            line = err.strip().splitlines()[-1]
            assert line.startswith(f"heurbench: error: sweep s ({out}) is in use by host ") and "pid " in line
            assert "Traceback" not in err
    for p in load_sweep(path).points:  # (Ray dedups worker log lines across the cluster: count files, not logs)
        assert yaml.safe_load(RunDir(out).trial(p.trial_id).status.read_text())["state"] == "done"
    df = pd.read_parquet(out / "metrics")
    assert not df.duplicated(ROW_KEY).any()
    assert sorted(df[df.kind == "step"].groupby("trial_id").size()) == [8, 8]
