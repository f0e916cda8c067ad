"""Type aliases and tensor conversion shared by the pricing modules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["DEFAULT_DTYPE", "TensorLike", "as_tensors", "is_call_tensor"]

TensorLike = torch.Tensor | float | int | np.ndarray | Sequence[float]
"""Anything that :func:`torch.as_tensor` turns into a float tensor."""

DEFAULT_DTYPE = torch.float64


def as_tensors(
    *values: TensorLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Convert values to tensors of one floating dtype and device, broadcast to a common shape.

    The dtype and device are taken from the first tensor argument when not given, else float64 on CPU.

    Examples:
        >>> a, b = as_tensors(1.0, [1.0, 2.0])
        >>> a.shape, b.dtype
        (torch.Size([2]), torch.float64)
    """
    first = next((v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()), None)
    if dtype is None:
        dtype = first.dtype if first is not None else DEFAULT_DTYPE
    if device is None:
        device = first.device if first is not None else None
    tensors = [torch.as_tensor(v, dtype=dtype, device=device) for v in values]
    return tuple(torch.broadcast_tensors(*tensors))


def is_call_tensor(
    is_call: bool | torch.Tensor | np.ndarray | Sequence[bool], like: torch.Tensor
) -> torch.Tensor:
    """Return a boolean tensor for ``is_call`` broadcast to the shape and device of ``like``."""
    flags = torch.as_tensor(is_call, dtype=torch.bool, device=like.device)
    return flags.expand_as(like) if flags.shape != like.shape else flags
