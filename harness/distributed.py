"""torch.distributed set-up from whatever launched us: torchrun, SLURM's srun, or Ray Train."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from harness.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we called init_process_group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM nodelist such as 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def env_ranks() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's or srun's environment; (0, 1, 0) otherwise."""
    e = os.environ
    if "WORLD_SIZE" in e and "RANK" in e:
        return int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0))
    ntasks = int(e.get("SLURM_STEP_NUM_TASKS", e.get("SLURM_NTASKS", "1")))
    if "SLURM_PROCID" in e and "SLURM_STEP_ID" in e and ntasks > 1:
        e.setdefault("MASTER_ADDR", first_slurm_host(e.get("SLURM_STEP_NODELIST", e.get("SLURM_JOB_NODELIST", "localhost"))))
        e.setdefault("MASTER_PORT", str(20000 + int(e.get("SLURM_JOB_ID", "0")) % 20000))
        return int(e["SLURM_PROCID"]), ntasks, int(e.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def setup(device_pref: str = "auto") -> tuple[Dist, torch.device]:
    """Join (or detect) the process group; pick this rank's device."""
    cuda = torch.cuda.is_available() and device_pref != "cpu"
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("perf.device = 'cuda' but no CUDA device is visible on this host (perf.device: auto uses "
                          "one where there is one)")
    if dist.is_available() and dist.is_initialized():  # Ray Train (or a caller) already did it
        d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    else:
        rank, world, local = env_ranks()
        d = Dist(rank, world, local, owns_group=world > 1)
        if world > 1:
            dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device(f"cuda:{d.local_rank % torch.cuda.device_count()}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return d, device


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t)
    return t


def first_flagged(at: torch.Tensor, d: Dist) -> int:
    """Smallest non-negative value of a per-rank scalar across ranks (-1 where none is)."""
    if d.world == 1:
        return int(at.item())
    t = torch.where(at < 0, torch.full_like(at, 2**62), at)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    v = int(t.item())
    return -1 if v == 2**62 else v


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
