"""Large CPU tensors on transparent huge pages, for the simulators' path outputs.

A fresh ``torch.empty`` of hundreds of megabytes is paid for again when it is first written: one
page fault per 4 KiB page, which costs a path simulator about as much as its arithmetic. Memory
mapped here is advised ``MADV_HUGEPAGE``, so that Linux backs it with 2 MiB pages where the
kernel's ``transparent_hugepage`` setting allows (``always`` or ``madvise``, the common defaults):
512 times fewer faults. Elsewhere (other systems, accelerators, small sizes) it is ``torch.empty``.
The memory is returned when the last tensor viewing it is freed.
"""

from __future__ import annotations

import math
import mmap

import torch

__all__ = ["MIN_BYTES", "empty"]

_HUGE_PAGE = 2 << 20
MIN_BYTES = 4 * _HUGE_PAGE
"""Smaller tensors come from ``torch.empty`` (the allocator's own pages are cheap enough)."""


def empty(
    shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """Uninitialised tensor as ``torch.empty(shape, dtype=dtype, device=device)``.

    Large CPU tensors on Linux are mapped anonymously and advised ``MADV_HUGEPAGE``.

    Examples:
        >>> empty((3, 4), dtype=torch.float64).shape
        torch.Size([3, 4])
    """
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu" or nbytes < MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype, device=device)
    # private: shared anonymous memory is shmem, whose huge pages have their own (usually off) switch
    buffer = mmap.mmap(-1, -(-nbytes // _HUGE_PAGE) * _HUGE_PAGE, flags=mmap.MAP_PRIVATE)
    try:
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel without transparent huge pages: ordinary pages
        pass
    # frombuffer keeps a reference to the mapping, which is unmapped with the last tensor
    return torch.frombuffer(buffer, dtype=dtype, count=count).view(shape)
