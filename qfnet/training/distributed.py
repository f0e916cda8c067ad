"""Distributed data parallel helpers: join the ``torchrun`` process group, reduce across ranks."""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "broadcast_from_zero",
    "init_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node.

    Examples:
        >>> DistInfo(rank=0, world_size=1, local_rank=0).is_global_zero
        True
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(mode: str = "auto", device: torch.device | None = None) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    The backend is nccl for CUDA devices and gloo otherwise. A group that already exists is
    used as it is; one created here is destroyed at interpreter exit.

    Args:
        mode: ``auto`` or ``off`` (always a single process).
        device: The training device (selects the backend).

    Examples:
        >>> init_distributed("off").world_size
        1
    """
    if mode == "off":
        return DistInfo()
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _local_rank())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or not dist.is_available():
        return DistInfo()
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    atexit.register(_destroy)
    return DistInfo(dist.get_rank(), dist.get_world_size(), _local_rank())


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op for a single process); returns it.

    Examples:
        >>> all_reduce_sum(torch.tensor([1.0, 2.0]), DistInfo())  # one process: unchanged
        tensor([1., 2.])
    """
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: Any, info: DistInfo, device: torch.device) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` for one process).

    nccl carries the pickled bytes on the current CUDA device: ``device``'s here, also in a
    group created without ``torch.cuda.set_device`` (every rank would have used device 0).

    Examples:
        >>> all_gather_objects({"step": 3}, DistInfo(), torch.device("cpu"))
        [{'step': 3}]
    """
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    cuda = device.type == "cuda"
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_zero(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank 0's (no-op for a single process); returns it.

    Examples:
        >>> broadcast_from_zero(torch.tensor([1.0, 2.0]), DistInfo())  # one process: unchanged
        tensor([1., 2.])
    """
    if info.enabled:
        dist.broadcast(tensor, src=0)
    return tensor


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (``flag`` itself for one process).

    One all-reduce (MAX) of a single number on ``device`` (nccl needs a CUDA tensor); reading
    it back synchronises the GPU.

    Examples:
        >>> any_rank(True, DistInfo(), torch.device("cpu"))
        True
    """
    if not info.enabled:
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier(info: DistInfo, device: torch.device | None = None) -> None:
    """Wait for every rank (no-op for a single process).

    With ``device``, by an all-reduce of one number there: nccl's own barrier picks a CUDA
    device by rank when none was set current, another device than the training one.

    Examples:
        >>> barrier(DistInfo(rank=0, world_size=1)) is None
        True
    """
    if not info.enabled:
        return
    if device is None:
        dist.barrier()
    else:
        dist.all_reduce(torch.zeros((), device=device))
