"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); torchrun only."""

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


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (its WORLD_SIZE, RANK and LOCAL_RANK); else one process.

    Only torchrun's variables are read: a job started another way (e.g. plain srun or submitit)
    without them trains as independent single processes.
    """
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
