"""The process layout of a training run: torchrun's environment, the process group, collectives.

Every collective here is a no-op in a single process, so the trainer calls them
unconditionally.

Example:
    >>> dist_info = init_distributed("cpu")   # outside torchrun: one process
    >>> dist_info.world_size, all_reduce_sum([1.0, 2.0], dist_info)
    (1, [1.0, 2.0])
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from w2vtools.errors import W2VError


@dataclass(frozen=True)
class DistInfo:
    """The process layout: from torchrun's environment, or a single process."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_*``).

    NCCL when CUDA is available (one GPU per local rank), gloo on CPU. Without
    torchrun's variables this is a single process. Calling it twice is harmless.

    Args:
        device: ``cpu`` or ``cuda`` to force; None picks CUDA when available.

    Example:
        >>> init_distributed("cpu").world_size   # outside torchrun
        1
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise W2VError("a CUDA device was asked for but none is available")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # W2V_DIST_BACKEND=gloo runs CUDA ranks over gloo: NCCL refuses two ranks on one GPU,
        # which is the only way to exercise multi-process training on a one-GPU machine.
        dist.init_process_group(backend=os.environ.get("W2V_DIST_BACKEND") or ("nccl" if use_cuda else "gloo"))
    return DistInfo(world_size=world_size, rank=rank, local_rank=local_rank, device=dev)


def shutdown_distributed(dist_info: DistInfo) -> None:
    """Leave the process group :func:`init_distributed` joined (nothing in a single process)."""
    if dist_info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, dist_info: DistInfo) -> torch.nn.Module:
    """``model`` in DistributedDataParallel across the ranks (itself in a single process)."""
    if not dist_info.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None,
        find_unused_parameters=True,  # layer drop and frozen parameters leave parameters unused
        broadcast_buffers=False,
    )


def all_reduce_sum(values: list[float], dist_info: DistInfo) -> list[float]:
    """``values`` summed element-wise over the ranks (in float64)."""
    if not dist_info.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist_info.device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: Any, dist_info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (any picklable value), in rank order."""
    if not dist_info.distributed:
        return [obj]
    gathered: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(dist_info: DistInfo) -> None:
    """Wait for every rank (nothing in a single process)."""
    if dist_info.distributed:
        dist.barrier()
