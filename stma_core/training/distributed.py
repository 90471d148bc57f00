"""torchrun support: one process per GPU (or several CPU processes with gloo), rank 0 writes.

`torchrun --nproc_per_node N [--nnodes ...] -m stma_cli.app train ...` sets RANK, WORLD_SIZE and
LOCAL_RANK; each rank samples its own clips (seed + rank) and DistributedDataParallel averages the
gradients, so every replica takes the same optimizer step. Runs on several nodes need a shared
file system for the run folder and the feature cache (rank 0 writes both, every rank reads them).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DistInfo:
    """Rank and world size of the initialized process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Joins the torchrun process group (nccl on CUDA, gloo on CPU) and picks this rank's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return current(), torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def parameter_digest(module: torch.nn.Module) -> str:
    """SHA-1 of every parameter and buffer, bit for bit: equal on all ranks while replicas agree."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
