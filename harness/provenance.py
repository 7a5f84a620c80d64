"""Where a trial ran and with what code, recorded in its status.json and every checkpoint it writes:
heurbench's version and commit, Python, torch, CUDA, cuDNN, NCCL, the device (and every visible one of its type),
the host, the SLURM job, the Ray node, when it started (the first start: a resume keeps it and counts itself in
`resumed`) and ended; and where each of its components (model, data set, optimizer, schedule, heuristics; built
in or plug-in) came from (module, package version, or a content hash of a plain module file). `--resume` with
changed component code, or on another torch, CUDA, cuDNN, NCCL, device or heurbench commit, logs one warning per
difference naming it and goes on (the trial's record then shows both: the checkpoint's provenance is the new one
from the next save on)."""
from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from harness.registry import register

if TYPE_CHECKING:
    import torch

    from harness.config import TrialConfig

log = logging.getLogger("heurbench.train")
# what a resume warns about when it changed, and a report when its trials differ on it
COMPARED = ("heurbench", "commit", "torch", "cuda", "cudnn", "nccl", "device")


@functools.lru_cache(maxsize=1)
def code() -> dict:
    """heurbench's installed version and, in a git checkout, its commit (with '+dirty' for local changes)."""
    try:
        version = importlib.metadata.version("heurbench")
    except importlib.metadata.PackageNotFoundError:
        version = None
    repo = Path(__file__).resolve().parents[1]
    commit = None
    if (repo / ".git").exists():
        try:
            git = ["git", "-C", str(repo)]
            commit = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
            dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=10).stdout.strip()
            commit += "+dirty" if dirty else ""
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"heurbench": version, "commit": commit}


def environment(device: "torch.device") -> dict:
    import torch

    slurm = {k.lower(): os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID")
             if k in os.environ}
    if device.type == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "cpu"
        names = [name]
    return {**code(), "python": platform.python_version(), "torch": str(torch.__version__), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "nccl": nccl(), "device": f"{device.type}: {name}",
            "device_count": len(names), "devices": names, "host": socket.gethostname(), **slurm, **ray_node()}


def nccl() -> "str | None":
    """NCCL's version, dotted, where CUDA is available."""
    import torch

    if not torch.cuda.is_available():
        return None
    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def ray_node() -> dict:
    """{'ray_node': id} when Ray is initialised in this process (never importing it), else {}."""
    ray = sys.modules.get("ray")
    return {"ray_node": ray.get_runtime_context().get_node_id()} if ray and ray.is_initialized() else {}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def started(new: dict, ck: "dict | None") -> dict:
    """`new` with its start: now, or on a resume from checkpoint `ck` the first start (from its provenance) and
    `resumed` counting the resumes."""
    old = ck.get("provenance", {}) if ck else {}
    return {**new, "started": old.get("started") or now(), "resumed": old.get("resumed", 0) + 1 if ck else 0}


def ended(p: dict) -> dict:
    return {**p, "ended": now()}


def columns(p: dict) -> dict:
    """Provenance as flat columns provenance.<key> (not the components; device names joined)."""
    return {f"provenance.{k}": ", ".join(v) if isinstance(v, list) else v for k, v in p.items() if k != "components"}


def components(cfg: "TrialConfig") -> dict:
    """kind:name -> origin (harness.registry.Entry.origin) of every component the trial uses."""
    from harness.heuristics import configured

    used = [("model", cfg.model.name), ("dataset", cfg.data.name), ("optimizer", cfg.optim.name),
            ("schedule", cfg.schedule.name)] + [("heuristic", n) for n, _ in configured(cfg)]
    return {f"{kind}:{name}": register.get(kind, name).origin() for kind, name in used}


def of_trial(cfg: "TrialConfig", device: "torch.device") -> dict:
    return {**environment(device), "components": components(cfg)}


def warn_if_changed(trial_id: str, old: dict, new: dict) -> list[str]:
    """One warning per difference between a resumed checkpoint's provenance and this run's; returns them."""
    if not old:
        return []
    lines = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in COMPARED if old.get(k) != new.get(k)]
    was, now = old.get("components", {}), new.get("components", {})
    lines += [f"{c} changed: {was.get(c)} -> {now.get(c)}" for c in sorted(set(was) | set(now))
              if was.get(c) != now.get(c)]
    for line in lines:
        log.warning("trial %s resumes with different code or environment: %s", trial_id, line)
    return lines
