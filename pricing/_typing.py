"""Type aliases and tensor conversion shared by the pricing modules."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pricing._validation import check_not_bool, check_real

__all__ = [
    "DEFAULT_DTYPE",
    "TensorLike",
    "as_tensors",
    "broadcast_named",
    "broadcast_shape",
    "broadcast_shapes",
    "call_flag",
    "call_flags",
    "check_numbers",
    "coarsest_eps",
    "common_dtype_device",
    "is_call_tensor",
    "named_tensors",
    "ordinary",
    "real_number",
    "real_scalar",
    "real_tensor",
    "rounding_tolerance",
]

TensorLike = torch.Tensor | float | int | np.ndarray | Sequence[float]
"""Anything that :func:`torch.as_tensor` turns into a float tensor."""

DEFAULT_DTYPE = torch.float64


def common_dtype_device(
    values: Sequence[object], dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[torch.dtype, torch.device | str | None]:
    """``dtype`` and ``device`` where given, else the widest floating dtype of the tensor values,
    at least float32 (float64 without any), and the first one's device (None: the CPU).

    A float16 or bfloat16 input is computed in float32: the CPU has no half-precision kernels
    for the normal distribution (a float16 spot failed inside torch with ``"erfcx_cpu" not
    implemented for 'Half'``), and a price rounded to 3 digits is no price.
    """
    floating = [v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if dtype is None:
        dtype = DEFAULT_DTYPE
        if floating:
            dtype = torch.float32
            for v in floating:
                dtype = torch.promote_types(dtype, v.dtype)
    if device is None and floating:
        device = floating[0].device
    return dtype, device


def as_tensors(
    *values: TensorLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Convert values to tensors of one floating dtype and device, broadcast to a common shape.

    When not given, the dtype is the widest of the floating tensor arguments (float32 and float64
    tensors give float64, as torch promotes them; the first one's dtype used to win, silently
    rounding the others), else float64; the device is the first tensor argument's, else CPU.

    Raises:
        ValueError: the shapes do not broadcast (they are listed in argument order).

    Examples:
        >>> a, b = as_tensors(1.0, [1.0, 2.0])
        >>> a.shape, b.dtype
        (torch.Size([2]), torch.float64)
        >>> as_tensors(torch.ones(1, dtype=torch.float32), torch.ones(1, dtype=torch.float64))[0].dtype
        torch.float64
    """
    dtype, device = common_dtype_device(values, dtype, device)
    tensors = [torch.as_tensor(v, dtype=dtype, device=device) for v in values]
    shape = broadcast_shape(tensors)
    return tuple(t.expand(shape) for t in tensors)


def named_tensors(
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **named: object,
) -> tuple[torch.Tensor, ...]:
    """:func:`as_tensors` of keyword arguments, in their order: each is converted by
    :func:`real_tensor` (so that a bad one is refused by its name) and a ValueError where the
    shapes do not broadcast names each input with its shape.

    Examples:
        >>> spot, strike = named_tensors(spot=100.0, strike=[90.0, 110.0])
        >>> spot.shape, strike.dtype
        (torch.Size([2]), torch.float64)
        >>> named_tensors(spot="100", strike=90.0)
        Traceback (most recent call last):
        ...
        TypeError: spot must be real numbers, got '100'
    """
    dtype, device = common_dtype_device(list(named.values()), dtype, device)
    tensors = {n: real_tensor(n, v, dtype=dtype, device=device) for n, v in named.items()}
    shape = broadcast_named(tensors, "input")
    return tuple(t.expand(shape) for t in tensors.values())


def real_tensor(
    name: str,
    value: object,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``value`` as a tensor (``torch.as_tensor(value, dtype=dtype, device=device)``), refusing by
    ``name`` what is not real numbers: a bool or a complex (ValueError, see
    :func:`pricing._validation.check_not_bool` and :func:`~pricing._validation.check_real`), and
    None, text or objects (TypeError; torch's message, such as ``new(): invalid data type
    'str'``, named no input). A non-tensor is converted through numpy once, so the checks cost
    no pass of their own over a list.

    Shape:
        ``value``'s shape.

    Examples:
        >>> real_tensor("strike", [90, 110], dtype=torch.float64).tolist()
        [90.0, 110.0]
        >>> real_tensor("strike", None)
        Traceback (most recent call last):
        ...
        TypeError: strike must be real numbers, got None
    """
    if isinstance(value, torch.Tensor):
        check_not_bool(**{name: value})
        check_real(**{name: value})
        return torch.as_tensor(value, dtype=dtype, device=device)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError):  # e.g. a ragged list
        array = None
    if array is not None and array.dtype.kind in "bc":
        check_not_bool(**{name: value if array.ndim == 0 else array})
        check_real(**{name: value})
    if array is None or array.dtype.kind not in "iuf":  # text, None, objects, dates
        raise TypeError(f"{name} must be real numbers, got {reprlib.repr(value)}")
    if not array.flags.writeable:  # a read-only array (a pandas column of a parquet table):
        array = array.copy()  # shared with the tensor, torch warned of undefined behaviour
    return torch.as_tensor(array, dtype=dtype, device=device)


def coarsest_eps(*values: object) -> float:
    """Machine epsilon of the least precise floating-point value as given (a tensor's, a numpy
    array's or scalar's dtype; float64's for Python numbers and integers): the rounding that
    inputs converted to float64 still carry (a float32 time of 0.7 is 0.69999999 in float64).

    Examples:
        >>> coarsest_eps(0.7, [0.1, 0.2]) == torch.finfo(torch.float64).eps
        True
        >>> coarsest_eps(np.float32(0.7), 0.3) == torch.finfo(torch.float32).eps
        True
    """
    eps = torch.finfo(torch.float64).eps
    for value in values:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                eps = max(eps, torch.finfo(value.dtype).eps)
            continue
        try:
            dtype = np.asarray(value).dtype
        except (TypeError, ValueError, RuntimeError):  # refused by name where it is converted
            continue
        if np.issubdtype(dtype, np.floating):
            eps = max(eps, float(np.finfo(dtype).eps))
    return eps


def rounding_tolerance(*values: object, floor: float, epsilons: float = 8.0) -> float:
    """A relative tolerance for values equal but for rounding: ``floor`` (that of float64
    inputs built two ways), or ``epsilons`` machine epsilons of the coarsest input
    (:func:`coarsest_eps`) where that is larger (float32's 9.5e-7 for 8).

    Examples:
        >>> rounding_tolerance(0.7, 0.3, floor=1e-12)
        1e-12
        >>> rounding_tolerance(np.float32(0.7), 0.3, floor=1e-12) == 8 * float(np.finfo(np.float32).eps)
        True
    """
    return max(floor, epsilons * coarsest_eps(*values))


def check_numbers(**named: object) -> None:
    """Refuse by name each value that is not real numbers, as :func:`real_tensor` refuses it (for
    parameters that are used as given, a float or a tensor, rather than converted here).

    Examples:
        >>> check_numbers(rate=0.01, dividend=None)
        Traceback (most recent call last):
        ...
        TypeError: dividend must be real numbers, got None
    """
    for name, value in named.items():
        real_tensor(name, value)


def real_number(name: str, value: object) -> float:
    """One real number (a Python or numpy number, or a one-element tensor or array) as a float;
    anything else is refused by ``name`` as :func:`real_tensor` refuses it, and several values
    or none (``float()`` said only "only one element tensors can be converted to Python
    scalars") with a ValueError.

    Examples:
        >>> real_number("rate", np.float32(0.5)), real_number("rate", torch.tensor([2]))
        (0.5, 2.0)
        >>> real_number("rate", torch.zeros(0))
        Traceback (most recent call last):
        ...
        ValueError: rate must be a single number, got shape (0,)
    """
    values = real_tensor(name, value)
    if values.numel() != 1:
        raise ValueError(f"{name} must be a single number, got shape {tuple(values.shape)}")
    return float(values.detach().reshape(()))


def real_scalar(name: str, value: object) -> float | torch.Tensor:
    """One real number, checked and refused by ``name`` as :func:`real_number` does; a tensor
    that requires grad comes back as a 0-d view of itself, its autograd graph kept (a pricer's
    ``rate`` given so gives its rho by autograd: :func:`real_number`'s float lost it, silently
    where another input required grad too), anything else as a float.

    Examples:
        >>> rate = torch.tensor([0.05], requires_grad=True)
        >>> real_scalar("rate", rate).requires_grad, real_scalar("rate", 0.05)
        (True, 0.05)
    """
    number = real_number(name, value)
    graph = isinstance(value, torch.Tensor) and value.requires_grad
    return value.reshape(()) if graph else number


def broadcast_shape(tensors: Sequence[torch.Tensor]) -> torch.Size:
    """The shape ``tensors`` broadcast to; a ValueError listing their shapes (in argument
    order) where they do not (torch's message names no input).

    Examples:
        >>> broadcast_shape([torch.zeros(3), torch.zeros(2, 1)])
        torch.Size([2, 3])
    """
    try:
        return broadcast_shapes(*(t.shape for t in tensors))
    except ValueError:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise ValueError(f"input shapes do not broadcast: {shapes} (in argument order)") from None


def broadcast_named(named: Mapping[str, torch.Tensor], what: str) -> torch.Size:
    """The shape the named tensors broadcast to; a ValueError listing each one's name and shape
    where they do not (``what`` says whose shapes: "Heston parameter", "surrogate input").

    Examples:
        >>> broadcast_named({"v0": torch.zeros(2), "kappa": torch.zeros(3)}, "Heston parameter")
        Traceback (most recent call last):
        ...
        ValueError: Heston parameter shapes do not broadcast: v0 (2,), kappa (3,)
    """
    try:
        return broadcast_shapes(*(t.shape for t in named.values()))
    except ValueError:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in named.items())
        raise ValueError(f"{what} shapes do not broadcast: {shapes}") from None


def broadcast_shapes(*shapes: Sequence[int]) -> torch.Size:
    """``torch.broadcast_shapes`` by numpy's rule, a ValueError where the shapes do not broadcast.

    Eager torch's first call imports sympy (0.5-1.2 s here, once per process: a third of a
    ``qfnet calibrate`` run); numpy's is the same rule, and 7x faster per call. Inside
    ``torch.compile`` (symbolic sizes) it is torch's.

    Examples:
        >>> broadcast_shapes((3,), (2, 1))
        torch.Size([2, 3])
    """
    if torch.compiler.is_compiling():
        return torch.broadcast_shapes(*shapes)
    return torch.Size(np.broadcast_shapes(*shapes))


def call_flags(is_call: object, device: torch.device | str | None = None) -> torch.Tensor:
    """``is_call`` as a boolean tensor: booleans, or numbers that are exactly 0 or 1; anything
    else (a string such as ``"False"``, 0.7) is an error naming ``is_call``.

    Examples:
        >>> call_flags([True, 0]).tolist()
        [True, False]
        >>> call_flags("False")
        Traceback (most recent call last):
        ...
        TypeError: is_call must be booleans (True for calls), got 'False'
    """
    if isinstance(is_call, np.ndarray) and not is_call.flags.writeable:  # as real_tensor's:
        is_call = is_call.copy()  # shared with the tensor, torch warned of undefined behaviour
    try:
        raw = torch.as_tensor(is_call, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"is_call must be booleans (True for calls), got {is_call!r}") from None
    if raw.dtype != torch.bool and not bool(((raw == 0) | (raw == 1)).all()):
        raise ValueError(f"is_call must be booleans or 0/1, got {is_call!r}")
    return raw.to(torch.bool)


def call_flag(is_call: object) -> bool:
    """A single ``is_call`` flag as a bool (see :func:`call_flags`), for pricers of one option
    type per call (a string such as ``"False"`` was truthy: it priced a call).

    Examples:
        >>> call_flag(False), call_flag(1)
        (False, True)
    """
    flags = call_flags(is_call)
    if flags.numel() != 1:
        raise ValueError(f"is_call must be one flag for all options, got shape "
                         f"{tuple(flags.shape)}")  # fmt: skip
    return bool(flags.reshape(()))


def is_call_tensor(is_call: bool | TensorLike, like: torch.Tensor) -> torch.Tensor:
    """Return a boolean tensor for ``is_call`` (see :func:`call_flags`) on ``like``'s device,
    broadcast with ``like``'s shape (either may be the larger); a ValueError naming ``is_call``
    where they do not broadcast (numpy's message named neither).

    Examples:
        >>> is_call_tensor([True, False], torch.zeros(3))
        Traceback (most recent call last):
        ...
        ValueError: is_call: shape (2,) does not broadcast with the other inputs' shape (3,)
    """
    flags = call_flags(is_call, device=like.device)
    try:
        shape = broadcast_shapes(flags.shape, like.shape)
    except ValueError:
        raise ValueError(f"is_call: shape {tuple(flags.shape)} does not broadcast with the other "
                         f"inputs' shape {tuple(like.shape)}") from None  # fmt: skip
    return flags.expand(shape)


def ordinary(value: object) -> object:
    """``value``, or an ordinary copy of it where it is an inference tensor (made inside a
    ``torch.inference_mode`` block), which autograd refuses to save for backward: greeks by
    autograd copy their inputs through this.

    Examples:
        >>> with torch.inference_mode():
        ...     made = torch.ones(2)
        >>> made.is_inference(), ordinary(made).is_inference(), ordinary(1.5)
        (True, False, 1.5)
    """
    if isinstance(value, torch.Tensor) and value.is_inference():
        return value.clone()
    return value
