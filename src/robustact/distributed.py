"""The process group of a run over several processes (``torchrun --nproc_per_node=N``).

torchrun (or a cluster launcher: :mod:`robustact.study.launch`) sets ``WORLD_SIZE``, ``RANK``
and ``LOCAL_RANK``; :func:`init_distributed` then joins the process group (NCCL on GPUs, one
GPU per process; gloo on CPUs). Training wraps the model in ``DistributedDataParallel``
(:mod:`robustact.train.loop`: every process trains on its own shard of each batch, rank 0
alone writes); evaluation splits the points across the processes
(:mod:`robustact.eval.shards`). A single process gets a context of world size 1 whose
collectives return at once.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustact.device import select_device
from robustact.errors import ConfigError, RobustactError


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

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (``[value]`` in a single process).
        Raises a one-line error when another process has died."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        try:
            dist.all_gather_object(out, value)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise PeerFailed(self.rank, exc) from None
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, in every process."""
        if not self.enabled:
            return value
        box = [value]
        try:
            dist.broadcast_object_list(box, 0)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise PeerFailed(self.rank, exc) from None
        return box[0]

    def abort(self) -> None:
        """Leave the group at once (after a failure): the other processes' waiting
        collectives then fail instead of hanging."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class PeerFailed(RobustactError):
    """Another process of the group died (or hung up) while this one waited for it."""

    def __init__(self, rank: int, cause: BaseException) -> None:
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        super().__init__(f"rank {rank}: another process of the run failed ({reason}); "
                         "rerun the same command to resume from the work already saved")


def stop_on_sigterm(ctx: DistContext, what_to_do: str) -> None:
    """In a process group, turn SIGTERM (torchrun stops every process when one fails; a
    cluster cancels a job) into a one-line error that says ``what_to_do``."""
    if not ctx.enabled:
        return

    def stop(signum: int, frame: Any) -> None:
        raise RobustactError(f"rank {ctx.rank}: stopped by {signal.Signals(signum).name} "
                             f"(another process of the run failed, or the job was cancelled); "
                             f"{what_to_do}")

    signal.signal(signal.SIGTERM, stop)


def current() -> DistContext:
    """The context of the process group this process already belongs to (world size 1 when
    none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext()


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


def free_port() -> int:
    """A TCP port free on this host now, for a local group's ``MASTER_PORT``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_torchrun(procs: int) -> list[str]:
    """The argv prefix that starts ``procs`` processes of a module on this host with torchrun
    (append ``robustact`` and its arguments): ``[python, -m, torch.distributed.run, ..., -m]``."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m"]
