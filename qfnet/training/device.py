"""Device, precision and seeding: the one place where the trainer decides where tensors live."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEVICE_TYPES",
    "accumulation_dtype",
    "check_float64_device",
    "deterministic_algorithms",
    "move_to_device",
    "resolve_device",
    "resolve_precision",
    "seed_everything",
]

DEVICE_TYPES = ("cpu", "cuda", "mps")
"""The device types the Trainer runs on (torch names more: meta, xpu, hpu, ...)."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for a name; ``auto`` picks CUDA, then MPS, then CPU (the Trainer then
    trades MPS for the CPU if the model holds float64 tensors: see :func:`check_float64_device`).

    Under ``torchrun`` on CUDA, ``auto`` and ``cuda`` mean ``cuda:$LOCAL_RANK``.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or a ``torch.device``.

    Raises:
        ValueError: If the named device is not available here, or is not a CPU, CUDA or MPS
            device.

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device: unknown device name {name!r}") from exc
    if device.type not in DEVICE_TYPES:  # the Trainer then failed mid-training on meta
        # ("Tensor.item() cannot be called on meta tensors")
        raise ValueError(f"device: {name!r} is not one the Trainer runs on (cpu, cuda, mps)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(
                f"device: {device} requested (LOCAL_RANK={os.environ.get('LOCAL_RANK', 0)}) but "
                f"only {count} CUDA device(s) are visible; start torchrun with at most {count} "
                "process(es) per node, or train on device='cpu'"
            )
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device: {name!r} requested but MPS is not available")
    return device


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """The dtype the trainer sums losses and metrics in: float64, except float32 on MPS, which
    has no float64 (creating or converting to a float64 MPS tensor raises a TypeError).

    Examples:
        >>> accumulation_dtype(torch.device("cpu")), accumulation_dtype(torch.device("mps"))
        (torch.float64, torch.float32)
    """
    return torch.float32 if device.type == "mps" else torch.float64


def check_float64_device(
    device: torch.device, requested: str | torch.device, *modules: object
) -> torch.device:
    """``device``, unless it is MPS (which has no float64) and a module holds a float64 tensor:
    then the CPU if ``requested`` was ``auto``, else a ValueError naming the tensor.

    Examples:
        >>> check_float64_device(torch.device("mps"), "auto", torch.nn.Linear(1, 1).double())
        device(type='cpu')
        >>> check_float64_device(torch.device("mps"), "mps", torch.nn.Linear(1, 1).double())
        Traceback (most recent call last):
        ...
        ValueError: device: 'mps' has no float64, and the model's tensor 'weight' is float64; ...
    """
    if device.type != "mps":
        return device
    wide = next((name for m in modules if isinstance(m, torch.nn.Module)
                 for name, t in [*m.named_parameters(), *m.named_buffers()]
                 if t.dtype == torch.float64), None)  # fmt: skip
    if wide is None:
        return device
    if str(requested) == "auto":
        return torch.device("cpu")
    raise ValueError(f"device: {str(requested)!r} has no float64, and the model's tensor "
                     f"{wide!r} is float64; train on device='cpu' (or in float32)")  # fmt: skip


def resolve_precision(precision: str, device: torch.device, model: torch.nn.Module) -> str:
    """Resolve ``auto`` to ``32``, ``fp16`` or ``bf16`` and check the choice fits the device.

    ``auto`` turns mixed precision on only on CUDA for models with float32 parameters (bf16
    where supported, else fp16); float64 models and CPU/MPS stay in full precision.

    Examples:
        >>> resolve_precision("auto", torch.device("cpu"), torch.nn.Linear(2, 1))
        '32'
    """
    if precision == "auto":
        float32 = any(p.dtype == torch.float32 for p in model.parameters())
        if device.type != "cuda" or not float32:
            return "32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision: 'fp16' needs a CUDA device, got {device}")
    if precision in ("fp16", "bf16") and not any(
        p.dtype == torch.float32 for p in model.parameters()
    ):  # autocast leaves float64 (and half) models as they are: the setting would do nothing
        raise ValueError(f"precision: {precision!r} mixes float32 with half precision; the model "
                         "has no float32 parameters (use '32' for a float64 model)")  # fmt: skip
    return precision


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device).

    Examples:
        >>> seed_everything(0); a = torch.rand(1); seed_everything(0)
        >>> bool(torch.rand(1) == a)
        True
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the legacy global RNG is what user code may draw from
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Within the block, ask torch for deterministic algorithms (and the cuDNN/cuBLAS settings
    they need, ``CUBLAS_WORKSPACE_CONFIG`` among them) when ``enabled``; the process's previous
    settings, and that environment variable's value (or absence), come back on exit, so a
    Trainer's ``deterministic=True`` does not leak into the caller's other work.

    Examples:
        >>> with deterministic_algorithms(True):
        ...     torch.are_deterministic_algorithms_enabled()
        True
        >>> torch.are_deterministic_algorithms_enabled()
        False
    """
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)  # fmt: skip
    saved_cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]
        # the environment too: it stayed set after fit, and the caller's subprocesses got it
        if saved_cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved_cublas


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in a (nested) tuple, list or mapping to ``device``.

    Examples:
        >>> move_to_device((torch.zeros(1), [torch.ones(1)]), torch.device("cpu"))[1][0]
        tensor([1.])
    """
    if isinstance(batch, torch.Tensor):
        if batch.device == device:
            return batch
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
