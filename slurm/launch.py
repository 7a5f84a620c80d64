"""`heurbench slurm submit x.yaml`: a sweep on SLURM through submitit, in one of two modes.

array: one SLURM job per unfinished trial (a job array per sweep, chained with afterok
       for depends_on); each job resumes its trial, and requeues itself on timeout or
       preemption through submitit's `checkpoint()`.
ray:   one allocation of N nodes; a Ray head on the first node, Ray workers on the rest,
       and the Tune sweep driver on the head (`harness.tune_driver.run_sweep`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from harness.errors import ConfigError
from harness import confine
from harness.grid import FINISHED, Sweep, in_order, state_of, write_resolved
from harness.runner import log_to_stderr, run_point
from harness.storage import write_text
from harness.tune_driver import run_sweep

log = logging.getLogger("heurbench.slurm")
# srun's per-task variables of the job step that runs RaySweepJob: Ray's processes, and so the trials in them, must
# not inherit them, or harness.distributed takes each trial for one rank of a DDP group as wide as the allocation
TASK_ENV = re.compile(r"SLURM_(PROCID|LOCALID|NODEID|GTIDS|TASK_PID|STEP\w*|NTASKS\w*|NPROCS|TASKS_PER_NODE|"
                      r"SRUN_COMM_\w+|LAUNCH_NODE_IPADDR|CPU_BIND\w*|DISTRIBUTION)")
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def ray_env() -> dict[str, str]:
    """This process's environment without srun's per-task variables (TASK_ENV)."""
    return {k: v for k, v in os.environ.items() if not TASK_ENV.fullmatch(k)}


@contextmanager
def without_task_env():
    """os.environ without TASK_ENV while Ray starts its processes here (they copy the environment), then as it was."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if TASK_ENV.fullmatch(k)}
    try:
        yield
    finally:
        os.environ.update(saved)


class TrialJob:
    """One trial as a SLURM job: runs it with resume, and on timeout/preemption requeues itself."""

    def __call__(self, cfg, out: str) -> str:
        log_to_stderr()
        return run_point(cfg, Path(out))

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class RaySweepJob(TrialJob):
    """One task per node: task 0 is the Ray head and runs the sweeps; the others join as Ray workers."""

    def __call__(self, sweeps: list[Sweep], out_root: str) -> dict:
        import submitit

        log_to_stderr()
        env = submitit.JobEnvironment()
        rendezvous = Path(out_root) / ".ray" / f"{env.job_id}-{os.environ.get('SLURM_RESTART_COUNT', 0)}"
        if env.global_rank == 0:
            return self.head(sweeps, Path(out_root), rendezvous, env.num_nodes)
        self.worker(rendezvous)
        return {}

    @staticmethod
    def head(sweeps: list[Sweep], out_root: Path, rendezvous: Path, nodes: int) -> dict:
        import ray

        with without_task_env():
            ray.init(address="local", include_dashboard=False, configure_logging=False,
                     num_cpus=int(os.environ.get("SLURM_CPUS_ON_NODE", os.cpu_count())))
        address = ray.get_runtime_context().gcs_address
        write_text(rendezvous / "address", address)
        log.info("ray head at %s; waiting for %d worker node(s)", address, nodes - 1)
        deadline = time.time() + 300
        while sum(n["Alive"] for n in ray.nodes()) < nodes and time.time() < deadline:
            time.sleep(0.5)
        try:
            counts = {}
            for s in sweeps:
                counts[s.name] = run_sweep(s, out_root)
            return counts
        finally:
            write_text(rendezvous / "done", "")
            ray.shutdown()

    @staticmethod
    def worker(rendezvous: Path) -> None:
        while not (rendezvous / "address").exists():
            time.sleep(0.5)
        address = (rendezvous / "address").read_text()
        env = {"RAY_AUTH_MODE": "token", **ray_env()}  # the head's ray.init enables Ray's token auth by default
        cpus = os.environ.get("SLURM_CPUS_ON_NODE", str(os.cpu_count()))  # the allocation's CPUs, as the head's
        proc = subprocess.Popen(["ray", "start", "--address", address, f"--num-cpus={cpus}", "--block"], env=env)
        try:
            while not (rendezvous / "done").exists() and proc.poll() is None:
                time.sleep(1)
        finally:
            proc.terminate()
            proc.wait()


def minutes(t: str) -> int:
    """SLURM's --time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> minutes, rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", t)
    if not m:
        raise ConfigError(f"--time {t!r}: expected a SLURM time: minutes, M:S, H:M:S, D-H, D-H:M or D-H:M:S")
    parts = [int(x) for x in m.group(2).split(":")]
    if m.group(1) is not None:  # D-H[:M[:S]]
        h, mi, sec = (parts + [0, 0])[:3]
        seconds = int(m.group(1)) * 86400 + h * 3600 + mi * 60 + sec
    elif len(parts) == 3:  # H:M:S
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:  # M or M:S
        seconds = parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)
    return -(-seconds // 60)


def executor(folder: Path, args, extra_sbatch: Optional[dict] = None, **params):
    import submitit

    ex = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=args.max_requeues)
    ex.update_parameters(partition=args.partition, time=minutes(args.time), nodes=args.nodes,
                         gpus_per_node=args.gpus_per_node or None,
                         additional_parameters={**(extra_sbatch or {}), **dict(args.sbatch)}, **params)
    return ex


def submit_array(sweeps: list[Sweep], out_root: Path, args) -> list[str]:
    """A job array per sweep (unfinished trials only), each sweep after the ones it depends on."""
    job_ids, after = [], None
    for s in sweeps:
        out = out_root / s.name
        todo = [p for p in s.points if state_of(out, p) not in FINISHED]
        if not todo:
            log.info("sweep %s: all %d trials finished; nothing to submit", s.name, len(s.points))
            continue
        r = s.spec.resources
        if r.pack != 1:
            log.warning("sweep %s: resources.pack = %s applies in --mode ray; each array task runs one trial",
                        s.name, r.pack)
        if r.workers_per_trial % args.nodes:
            raise ConfigError(f"{s.source}: resources.workers_per_trial = {r.workers_per_trial}: "
                              f"not divisible by --nodes {args.nodes}")
        cpus = max(1, round(r.cpus_per_trial / r.workers_per_trial))
        ex = executor(out / ".submitit", args, job_name=f"hb-{s.name}", array_parallelism=args.array_parallelism,
                      ntasks_per_node=r.workers_per_trial // args.nodes, cpus_per_task=cpus,
                      setup=[f"export OMP_NUM_THREADS={cpus}"],
                      dependency=f"afterok:{after}" if after else None,
                      extra_sbatch={"kill_on_invalid_dep": "yes"} if after else None)
        jobs = ex.map_array(TrialJob(), [p.cfg for p in todo], [str(out)] * len(todo))
        after = jobs[0].job_id.split("_")[0]
        job_ids.append(after)
        log.info("sweep %s: %d trials as job array %s (%d already finished)", s.name, len(todo), after,
                 len(s.points) - len(todo))
    return job_ids


def submit_ray(sweeps: list[Sweep], out_root: Path, args) -> list[str]:
    """One allocation for all sweeps: a Ray cluster over its nodes running the Tune sweeps in order."""
    ex = executor(out_root / sweeps[-1].name / ".submitit", args, job_name=f"hb-ray-{sweeps[-1].name}",
                  ntasks_per_node=1, exclusive=True)
    job = ex.submit(RaySweepJob(), sweeps, str(out_root))
    log.info("sweeps %s: Ray-on-SLURM job %s over %d node(s)", [s.name for s in sweeps], job.job_id, args.nodes)
    return [job.job_id]


def job_states(job_ids: list[str]) -> list[str]:
    """States of the jobs (every array task) that SLURM still knows about."""
    r = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%T"], capture_output=True, text=True)
    return r.stdout.split() if r.returncode == 0 else []


def wait(job_ids: list[str], poll: float = 3.0) -> None:
    while any(s not in ENDED for s in job_states(job_ids)):
        time.sleep(poll)


def cmd_submit(args) -> int:
    sweeps = in_order(args.config)
    out_root = Path(args.out).resolve()
    for s in sweeps:
        confine.claim(out_root / s.name, s.name)
    for s in sweeps:
        write_resolved(s, out_root / s.name)
    job_ids = (submit_ray if args.mode == "ray" else submit_array)(sweeps, out_root, args)
    print(json.dumps({"jobs": job_ids, "out": str(out_root)}))
    if not (args.wait and job_ids):
        return 0
    wait(job_ids)
    states = {s.name: [state_of(out_root / s.name, p) for p in s.points] for s in sweeps}
    for name, st in states.items():
        print(f"sweep {name}: " + ", ".join(f"{st.count(x)} {x}" for x in sorted(set(st))))
    return 0 if all(x in FINISHED for st in states.values() for x in st) else 1


def key_value(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise ConfigError(f"--sbatch {s!r}: expected KEY=VALUE, e.g. account=myproj")
    k, v = s.split("=", 1)
    return k.replace("-", "_"), v


def add_parser(sub) -> None:
    p = sub.add_parser("slurm", help="submit a sweep to SLURM (job array or Ray-on-SLURM)")
    ss = p.add_subparsers(dest="slurm_command", required=True)
    s = ss.add_parser("submit", help="submit a sweep YAML through submitit",
                      description=__doc__.split("\n\n")[1] if __doc__ else None,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("config", help="sweep YAML")
    s.add_argument("--partition", required=True)
    s.add_argument("--nodes", type=int, default=1, help="nodes per job (array: per trial; ray: the whole cluster)")
    s.add_argument("--gpus-per-node", type=int, default=0)
    s.add_argument("--time", default="60", help="time limit in SLURM's format: minutes, H:M:S, D-H:M ... (default 60)")
    s.add_argument("--mode", choices=["array", "ray"], default="array")
    s.add_argument("--out", default="runs", help="results root on a shared filesystem (default runs)")
    s.add_argument("--array-parallelism", type=int, default=256, help="array: most trials running at once")
    s.add_argument("--max-requeues", type=int, default=3, help="resubmissions after timeouts/preemptions")
    s.add_argument("--sbatch", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="extra #SBATCH option, e.g. --sbatch account=myproj --sbatch qos=high")
    s.add_argument("--wait", action="store_true", help="block until the jobs end; exit 1 unless all trials finished")
    s.set_defaults(func=cmd_submit)
