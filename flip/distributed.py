"""torch.distributed set-up from the launcher's environment: torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or, in a job submitit started (SLURM or its local executor),
submitit's `JobEnvironment`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from flip.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def export_submitit_env() -> None:
    """In a submitit job's task without torchrun's variables, set them from submitit's JobEnvironment:
    its global rank, number of tasks, local rank, and the first node as the rendezvous address (on a
    port derived from the job id, the same in every task; MASTER_PORT if set). Nothing otherwise."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit.helpers import TorchDistributedEnvironment

    # CUDA_VISIBLE_DEVICES stays: each task picks its GPU by local rank (init_distributed).
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def process_rank() -> int:
    """This process's global rank as its launcher (torchrun or submitit) set it; 0 for one process."""
    export_submitit_env()
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched as one of several processes; else one process.

    The rank, world size, local rank and rendezvous address are torchrun's variables (torchrun,
    `flipctl train --nproc`), or in a job submitit started, those of its `JobEnvironment`
    (`export_submitit_env`). A process started otherwise (e.g. plain srun) trains on its own.
    """
    export_submitit_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def resolve_device(name: str, info: DistInfo = DistInfo()) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> a device; under torchrun `cuda` means this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"must be auto, cpu or cuda, got {name!r}", key="device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name == "cuda":
        return torch.device("cuda", info.local_rank)
    return torch.device(name)
