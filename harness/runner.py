"""Running one sweep point (or a pack of them) in this process, or as DDP ranks through torchrun.

`python -m harness.runner CFG OUT` is one DDP rank of a trial: what `run_point` starts under
torchrun (ranks on one node) and what SLURM starts under srun (ranks across nodes); the trial's
config YAML is CFG, its sweep folder OUT.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import provenance
from harness.config import TrialConfig, dump, load_trial
from harness.errors import LockError
from harness.grid import FINISHED
from harness.layout import RunDir
from harness.storage import write_json

log = logging.getLogger("heurbench.runner")


def log_to_stderr(level: int = logging.INFO) -> None:
    """Progress lines as the CLI prints them, for trial processes that Ray, torchrun or SLURM start."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")


def parent_death_signal(sig: int = signal.SIGTERM):
    """A Popen preexec_fn (Linux; None elsewhere): `sig` to the child when its parent dies, so that torchrun's
    agent does not outlive a killed trial."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None).prctl  # looked up before the fork: the child only makes the call
    return lambda: prctl(1, sig)  # 1 = PR_SET_PDEATHSIG


def die_with_launcher() -> None:
    """A DDP rank: SIGKILL when its launcher (torchrun's agent, srun's step) dies, so that a rank stuck in a
    collective or a kernel never outlives its trial (files are written atomically; a kill loses no record)."""
    parent, arm = os.getppid(), parent_death_signal(signal.SIGKILL)
    if arm is not None:
        arm()
        if os.getppid() != parent:  # the launcher died before the signal was armed
            os._exit(1)


def run_point(cfg: TrialConfig, out: Path, workers: int = 1) -> str:
    """One trial, resuming where it stopped: in this process, or as `workers` DDP ranks via torchrun.

    An exception marks the trial `failed` (with the reason) before it propagates.
    """
    from harness.train import run_trial

    try:
        if workers == 1:
            return run_trial(cfg, out, resume=True, sweep=out.name)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
            fh.write(dump(cfg))
            fh.flush()
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={workers}"]
            subprocess.run(torchrun + ["-m", "harness.runner", fh.name, str(out)], check=True,
                           preexec_fn=parent_death_signal())
        return RunDir(out).trial(cfg.trial_id()).read_status()["state"]
    except Exception as err:
        mark_failed(out, [cfg], err)
        raise


def mark_failed(out: Path, cfgs: list[TrialConfig], err: Exception) -> None:
    """Record `err` as the reason in the status of every trial in `cfgs` that had not ended (where the folder can
    still be written), keeping its provenance with the time it ended; not for a LockError (another process is
    training those trials, and their status is its to write)."""
    if isinstance(err, LockError):
        return
    for cfg in cfgs:
        trial = RunDir(out).trial(cfg.trial_id())
        status = trial.read_status()
        if status.get("state") not in FINISHED:
            kept = {"provenance": provenance.ended(status["provenance"])} if "provenance" in status else {}
            try:
                write_json(trial.status, {"state": "failed", "reason": f"{type(err).__name__}: {err}", **kept})
            except OSError as status_err:  # a read-only folder: `err` is what the caller reports
                log.info("trial %s: status not recorded: %s", cfg.trial_id(), status_err)


def quiet_sigterm_exit(unraisable) -> None:
    """sys.unraisablehook of a Tune trial's worker. Tune ends a finished trial by removing its placement group,
    so the raylet SIGTERMs the worker, whose Ray handler raises SystemExit; landing inside a weakref callback,
    that SystemExit is printed as an 'Exception ignored' traceback (the worker exits all the same). Drop that
    one kind; anything else goes to the default hook."""
    if not issubclass(unraisable.exc_type, SystemExit):
        sys.__unraisablehook__(unraisable)


def run_job(cfgs: list[TrialConfig], out: Path, workers: int = 1) -> list[str]:
    """One Tune trial's work: a single point (run_point) or a pack of points trained as one stack."""
    sys.unraisablehook = quiet_sigterm_exit
    if len(cfgs) == 1:
        return [run_point(cfgs[0], out, workers)]
    from harness.train import run_pack

    try:
        return run_pack(cfgs, out, resume=True, sweep=out.name)
    except Exception as err:
        mark_failed(out, cfgs, err)
        raise


def main(argv: list[str]) -> None:
    """One DDP rank: `python -m harness.runner CFG OUT` (torch.distributed reads rank and world from the env)."""
    if len(argv) != 2:
        sys.exit("usage: python -m harness.runner CFG OUT  (one DDP rank of a trial; torchrun or srun starts it)")
    from harness.train import run_trial

    cfg_path, out = argv
    die_with_launcher()
    log_to_stderr(logging.WARNING)
    run_trial(load_trial(cfg_path), Path(out), resume=True)


if __name__ == "__main__":
    main(sys.argv[1:])
