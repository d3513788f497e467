"""Data-parallel training across processes (``torchrun --nproc_per_node=N``).

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`init_distributed` then joins
the process group (NCCL on GPUs, one GPU per process; gloo on CPUs) and the training loop wraps
the model in ``DistributedDataParallel``. Every process draws the same shuffled order and
trains on its own shard (:class:`robustact.data.BatchLoader` ``rank``/``world_size``);
``batch_size`` stays the global batch, split evenly over the processes, so a recipe means the
same on 1 or 8 devices (BatchNorm statistics are per process, as usual with DDP). Rank 0 alone
writes checkpoints, metrics and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from robustact.device import select_device
from robustact.errors import ConfigError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialised the process group (and ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over all processes (a no-op in a single process)."""
        if self.enabled:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def sync_state(self, model: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process (BatchNorm running stats
        drift apart between processes during an epoch)."""
        if self.enabled:
            for tensor in model.state_dict().values():
                if isinstance(tensor, torch.Tensor):
                    dist.broadcast(tensor, 0)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str) -> tuple[DistContext, torch.device]:
    """The distributed context from torchrun's environment, and this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(), select_device(device)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = select_device(device)
    if wanted.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                              "GPUs: start at most one process per GPU")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
        backend = "nccl"
    elif wanted.type == "cpu":
        chosen, backend = wanted, "gloo"
    else:
        raise ConfigError(f"distributed training runs on CUDA or CPU, not {wanted.type}")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, owns), chosen
