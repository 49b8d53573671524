"""torch.distributed set-up from the launcher's environment: torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), or, in a job submitit started (SLURM or its local executor),
submitit's `JobEnvironment`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from flip.choices import check_device_name
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
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name == "cuda":
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


# -- FSDP2: parameters, gradients and optimizer state sharded over the processes ----------------------------
def shard_model(root: nn.Module, blocks: list[nn.Module], device: torch.device) -> None:
    """Wrap `root` with FSDP2 (`fully_shard`) over all processes: each of `blocks` is its own group, so
    its whole weights exist only while it runs forward or backward, then `root` takes the rest.

    Call it before building the optimizer (the parameters become sharded DTensors) and after loading
    any weights. Rank 0's weights are broadcast first, as DDP does: ranks may have initialised
    differently (each seeds its own masking noise).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():
        for tensor in [*root.parameters(), *root.buffers()]:
            dist.broadcast(tensor, src=0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))  # "cpu" -> gloo, "cuda" -> nccl
    for block in blocks:
        fully_shard(block, mesh=mesh)
    # fully_shard takes no 0-d parameter (the temperature): such a parameter stays whole on every
    # process and its gradient is averaged over them, as DDP would.
    scalars = {p for p in root.parameters() if p.ndim == 0}
    for p in scalars:
        p.register_post_accumulate_grad_hook(_average_grad)
    fully_shard(root, mesh=mesh, ignored_params=scalars or None)


def _average_grad(param: torch.Tensor) -> None:
    # Averaging the whole accumulated gradient each time is still exact under gradient accumulation:
    # the mean over processes is linear, and what was added before was already averaged.
    dist.all_reduce(param.grad)
    param.grad.div_(dist.get_world_size())


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Whole tensors, gathered to rank 0's CPU memory (the other ranks get an empty dict).
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` with whole tensors, as an unwrapped module's, on rank 0 ({} elsewhere).
    A collective under FSDP: every process calls it."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_full_options())


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` as an unwrapped run's (whole tensors, parameters by index), on rank 0
    ({} elsewhere), so a checkpoint's optimizer state is the same whatever wrapping trained it.
    A collective under FSDP: every process calls it."""
    if not is_sharded(module):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(module, optimizer, options=_full_options())
    if not state:
        return {}
    index = {name: i for i, name in enumerate(_param_names(module, optimizer))}  # names -> optimizer order
    return {"state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in state["param_groups"]]}


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a `full_optimizer_state` (every process holds all of it) into a plain or sharded run."""
    if not is_sharded(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _param_names(module, optimizer)
    by_name = {"state": {names[i]: value for i, value in state["state"].items()},
               "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(module, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def _param_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameters' names in the optimizer's order (its state dict numbers them in that order)."""
    names = {id(p): name for name, p in module.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
