"""The Ray Tune sweep driver: every unfinished point of a sweep as one Tune trial (or a pack of points).

Each Tune trial calls `run_job` (harness/runner.py), which resumes its trials, so re-running
a sweep skips finished trials and resumes the others from their checkpoints. DDP trials
(`workers_per_trial > 1`) launch torchrun on the trial's node (ranks on one node; multi-node
DDP trials go through `heurbench slurm submit`). Ray is imported only when a sweep runs.
The driver holds the sweep's lock (harness.lock) for the whole sweep: a second driver on the same
folder waits `wait` seconds for it, then is refused with one line naming the holder.
A local Ray cluster's node is 127.0.0.1 (every port it opens listens on loopback only) unless the user names
another node IP. Tune retries a trial whose process, DDP rank or node died up to `TRIAL_RETRIES` times; the retry
resumes from the trial's last.pt. A trial that raised is not retried (it would fail the same way): its status
says `failed` and why.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Optional

from harness import confine
from harness.grid import FINISHED, Point, Sweep, state_of, write_resolved
from harness.layout import RunDir
from harness.lock import hold
from harness.runner import log_to_stderr, run_job

log = logging.getLogger("heurbench.sweep")

LOOPBACK = "127.0.0.1"
# Tune's max_failures: a trial whose process, DDP rank or node died runs again, at most this many times, resuming
# from its last.pt
TRIAL_RETRIES = 2
PROGRESS_EVERY = 10.0  # seconds between the driver's progress lines


def tune_trial(config: dict, jobs: dict, out: str, workers: int, cwd: str) -> None:
    """The Tune trainable: run job `config['job']` (its points' configs) from the driver's folder; report states.

    An exception the training raised in this process ends the Tune trial normally (logged; run_job has marked its
    points failed), so Tune does not retry it; a DDP rank's death (torchrun's CalledProcessError) propagates, and
    Tune retries it like a lost process."""
    from ray import tune

    os.chdir(cwd)  # Tune starts trials in their own folder; relative data paths mean the driver's
    log_to_stderr()
    try:
        states = ",".join(run_job(jobs[config["job"]], Path(out), workers))
    except subprocess.CalledProcessError:
        raise
    except Exception:
        log.exception("sweep %s: job %d raised (not retried: it would fail the same way)", Path(out).name,
                      config["job"])
        states = "raised"
    tune.report({"states": states})


def progress_callback(sweep: Sweep, out: Path, jobs: dict[int, list[Point]], total: int, already: int):
    """A Tune callback logging progress (the finished trial, counts and ETA) at most every PROGRESS_EVERY seconds,
    and always for the last trial and a failed one; and one line per retried trial."""
    from ray import tune

    from harness.train import fmt_eta

    class Progress(tune.Callback):
        def __init__(self):
            self.t0, self.finished, self.states, self.shown = time.time(), 0, {}, 0.0

        def _log(self, trial, failed: bool) -> None:
            for p in jobs[trial.config["job"]]:
                state = state_of(out, p)
                state = "failed" if failed and state not in FINISHED else state
                self.finished += 1
                self.states[state] = self.states.get(state, 0) + 1
                elapsed = time.time() - self.t0
                left = total - already - self.finished
                if elapsed - self.shown < PROGRESS_EVERY and left and state != "failed":
                    continue
                self.shown = elapsed
                counts = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items()))
                log.info("sweep %s: trial %s (point %d) %s | %d/%d finished (%s) | %s elapsed, ETA %s", sweep.name,
                         p.trial_id, p.index, state, already + self.finished, total, counts, fmt_eta(elapsed),
                         fmt_eta(elapsed / self.finished * left))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._log(trial, failed=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._log(trial, failed=True)

        def on_trial_recover(self, iteration, trials, trial, **info):
            for p in jobs[trial.config["job"]]:
                log.warning("sweep %s: trial %s (point %d) lost its process or node; retry %d/%d from its last.pt",
                            sweep.name, p.trial_id, p.index, trial.num_failures, TRIAL_RETRIES)

    return Progress()


def pack_size(sweep: Sweep, todo: list[Point]) -> int:
    """resources.pack, or for `auto` the probe's choice, measured in a Ray task holding one trial's resources."""
    r = sweep.spec.resources
    if r.pack != "auto":
        return r.pack
    import ray

    from harness.pack import probe

    task = ray.remote(num_cpus=r.cpus_per_trial, num_gpus=min(1.0, r.gpus_per_trial))(probe)
    size, rows = ray.get(task.remote(todo[0].cfg))
    log.info("sweep %s: pack probe %s -> pack %d", sweep.name,
             ", ".join(f"{row['pack']}: {row['images_per_s']:.0f} img/s" for row in rows), size)
    return size


def run_sweep(sweep: Sweep, out_root: Path, address: Optional[str] = None, num_cpus: Optional[int] = None,
              num_gpus: Optional[int] = None, wait: float = 0.0, node_ip: str = LOOPBACK) -> dict[str, int]:
    """Run every unfinished point of `sweep` as a Ray Tune trial, holding the sweep's lock (waiting up to `wait`
    seconds for another driver to let go of it, else LockError); returns the count of trials per state.
    Without `address`, on a new local cluster whose node IP is `node_ip`."""
    out = Path(out_root).resolve() / sweep.name
    confine.claim(out, sweep.name)
    with hold(RunDir(out).lock, f"sweep {sweep.name} ({out})", wait,
              hint="wait for it with --wait SECONDS, or stop that process"):
        return _run_sweep(sweep, out, address, num_cpus, num_gpus, node_ip)


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
             node_ip: str = LOOPBACK) -> None:
    """Join the Ray cluster at `address`, or start a new local one (never a stale one that `ray start` left in
    /tmp/ray/ray_current_cluster) of `num_cpus`/`num_gpus` whose node is `node_ip`: 127.0.0.1 keeps every
    port on loopback; another IP of this host lets other machines join, and Ray then listens on all interfaces.

    Ray reads 127.0.0.1 (as a node IP or in a cluster address) as "this host" and swaps in the host's outward
    IP, except where it takes itself to be on macOS or Windows (`ray_constants.ENABLE_RAY_CLUSTER`, env
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; it has no other switch): that flag is cleared for a loopback node or
    address, so the node started is 127.0.0.1 and listens there only, and an address on 127.0.0.1 is dialled
    as it is."""
    import ray
    from ray._common.network_utils import is_localhost, parse_address
    from ray._private import ray_constants

    from harness.registry import register

    local = not address
    # plain plug-in modules (`plugins:` next to a YAML): a cluster started before this driver knows nothing of
    # their folder, so its workers get this process's PYTHONPATH (which import_plugins extended)
    env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if register.paths else None
    host = node_ip if local else (parse_address(address) or ("",))[0]
    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = enabled and not is_localhost(host)
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice.addFilter(drop_token_notice)
    try:
        ray.init(address=address or "local", num_cpus=num_cpus if local else None,
                 num_gpus=num_gpus if local else None, _node_ip_address=node_ip if local else None,
                 include_dashboard=False, log_to_driver=True, configure_logging=False, runtime_env=env)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = enabled
        notice.removeFilter(drop_token_notice)
    total = ray.cluster_resources()
    log.info("ray: %s on %s (%g CPUs, %g GPUs; RAY_AUTH_MODE=%s)", "a new local Ray cluster" if local else
             "joined the Ray cluster", node_ip if local else address, total.get("CPU", 0), total.get("GPU", 0),
             os.environ.get("RAY_AUTH_MODE", "token" if local else "as the cluster's"))


def drop_token_notice(record: logging.LogRecord) -> bool:
    """Ray's 'Token authentication is enabled ...' notice on starting a local cluster: `init_ray`'s own line says
    what was started, with the auth mode."""
    return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _run_sweep(sweep: Sweep, out: Path, address: Optional[str], num_cpus: Optional[int],
               num_gpus: Optional[int], node_ip: str) -> dict[str, int]:
    import ray
    from ray import tune

    write_resolved(sweep, out)
    todo = [p for p in sweep.points if state_of(out, p) not in FINISHED]
    log.info("sweep %s: %d trials, %d already finished, %d to run -> %s", sweep.name, len(sweep.points),
             len(sweep.points) - len(todo), len(todo), out)
    if todo:
        if not ray.is_initialized():
            init_ray(address, num_cpus, num_gpus, node_ip)
        r = sweep.spec.resources
        from harness.pack import jobs as pack_jobs

        jobs = dict(enumerate(pack_jobs(todo, pack_size(sweep, todo))))
        trainable = tune.with_resources(
            partial(tune_trial, jobs={j: [p.cfg for p in ps] for j, ps in jobs.items()}, out=str(out),
                    workers=r.workers_per_trial, cwd=os.getcwd()),
            {"cpu": r.cpus_per_trial, "gpu": r.gpus_per_trial})
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment box or TensorBoard hint (verbose=0)
        tuner = tune.Tuner(
            trainable, param_space={"job": tune.grid_search(list(jobs))},
            tune_config=tune.TuneConfig(reuse_actors=True),  # one process per slot, not per trial: no re-import
            run_config=tune.RunConfig(
                name=time.strftime("%Y%m%d-%H%M%S"), storage_path=str(confine.writable(RunDir(out).tune)), verbose=0,
                failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                callbacks=[progress_callback(sweep, out, jobs, len(sweep.points), len(sweep.points) - len(todo))]))
        tuner.fit()
    counts: dict[str, int] = {}
    for p in sweep.points:
        s = state_of(out, p)
        counts[s] = counts.get(s, 0) + 1
    log.info("sweep %s finished: %s", sweep.name, counts)
    return counts
