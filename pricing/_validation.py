"""Input checks that name the offending field, element index and value (or file)."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "PARAMETER_DOMAINS",
    "carry_and_discount",
    "check_bounds_in_domain",
    "check_device",
    "check_finite",
    "check_nonnegative",
    "check_not_bool",
    "check_positive",
    "check_positive_int",
    "check_real",
    "check_seasoning",
    "check_where",
    "domain_requirement",
    "inside_domain",
    "is_complex",
    "is_whole",
    "json_safe",
    "outside_domain",
    "read_json",
]

PARAMETER_DOMAINS: dict[str, tuple[float, float, str]] = {
    "v0": (0.0, math.inf, "[)"), "kappa": (0.0, math.inf, "()"), "theta": (0.0, math.inf, "()"),
    "sigma": (0.0, math.inf, "()"), "rho": (-1.0, 1.0, "()"), "alpha": (0.0, math.inf, "()"),
    "beta": (0.0, 1.0, "[]"), "nu": (0.0, math.inf, "[)"),
}  # fmt: skip
"""Where the pricers take each Heston and SABR parameter, ``(low, high, brackets)``
(:func:`pricing.heston.price`, :func:`pricing.sabr.lognormal_vol`): a dataset domain's bounds
and a calibration's bounds lie inside."""


def outside_domain(name: str, low: float, high: float) -> str | None:
    """:data:`PARAMETER_DOMAINS`' interval of ``name``, written out, if ``[low, high]`` leaves
    it; else None. An infinite upper bound of an unbounded parameter is no bound: inside.

    Examples:
        >>> outside_domain("rho", -1.5, 0.0), outside_domain("theta", 0.01, math.inf)
        ('(-1, 1)', None)
    """
    lo, hi, brackets = PARAMETER_DOMAINS[name]
    below = low < lo or (low == lo and brackets[0] == "(")
    above = high > hi or (high == hi and brackets[1] == ")" and hi != math.inf)
    return f"{brackets[0]}{lo:g}, {hi:g}{brackets[1]}" if below or above else None


def inside_domain(values: np.ndarray, low: float, high: float, brackets: str) -> np.ndarray:
    """Which of ``values`` are finite and inside the interval ``brackets[0] low, high brackets[1]``
    (a :data:`PARAMETER_DOMAINS` entry).

    Examples:
        >>> inside_domain(np.array([-1.0, 0.5, np.nan]), *PARAMETER_DOMAINS["rho"]).tolist()
        [False, True, False]
    """
    with np.errstate(invalid="ignore"):
        above = values >= low if brackets[0] == "[" else values > low
        below = values <= high if brackets[1] == "]" else values < high
    return np.isfinite(values) & above & below


def domain_requirement(low: float, high: float, brackets: str) -> str:
    """An interval as the pricers' messages write it: ``finite``, ``finite and > 0``, ``in (-1, 1)``.

    Examples:
        >>> domain_requirement(*PARAMETER_DOMAINS["v0"]), domain_requirement(*PARAMETER_DOMAINS["rho"])
        ('finite and >= 0', 'in (-1, 1)')
    """
    if math.isinf(low) and math.isinf(high):
        return "finite"
    if math.isinf(high):
        return f"finite and {'>=' if brackets[0] == '[' else '>'} {low:g}"
    return f"in {brackets[0]}{low:g}, {high:g}{brackets[1]}"


def check_bounds_in_domain(name: str, low: float, high: float) -> None:
    """Refuse fitting bounds ``(low, high)`` of ``name`` that leave its domain
    (:func:`outside_domain`), naming both.

    Examples:
        >>> check_bounds_in_domain("rho", -1.5, 0.0)
        Traceback (most recent call last):
        ...
        ValueError: bounds['rho']: (-1.5, 0) leaves rho's domain (-1, 1)
    """
    domain = outside_domain(name, low, high)
    if domain:
        raise ValueError(f"bounds[{name!r}]: ({low:g}, {high:g}) leaves {name}'s domain {domain}")


def check_where(name: str, values: torch.Tensor, ok: torch.Tensor, requirement: str) -> None:
    """Raise ``ValueError`` naming ``name``, the first bad index and its value unless ``ok`` holds.

    Examples:
        >>> check_where("strike", torch.tensor([1.0, -2.0]), torch.tensor([True, False]), "> 0")
        Traceback (most recent call last):
        ...
        ValueError: strike must be > 0; got -2.0 at index 1
    """
    ok = torch.broadcast_to(ok, values.shape) if ok.shape != values.shape else ok
    if bool(ok.all()):
        return
    bad = torch.nonzero(~ok)[0]
    index = tuple(int(i) for i in bad)
    where = "" if values.dim() == 0 else f" at index {index[0] if len(index) == 1 else index}"
    value = float(values[index].detach())  # without detach, a requires_grad input also warned
    raise ValueError(f"{name} must be {requirement}; got {value}{where}")


def _check_all(
    requirement: str,
    test: Callable[[torch.Tensor], torch.Tensor],
    named: Mapping[str, torch.Tensor | float],
) -> None:
    for name, values in named.items():
        # numbers in float64: torch's default float32 read a rate of 1e39 as inf (refused) and
        # printed -0.2 as -0.20000000298023224
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values, dtype=torch.float64)
        check_where(name, values, test(values), requirement)


def check_positive(**named: torch.Tensor) -> None:
    """Require every element of each named tensor to be finite and > 0."""
    _check_all("finite and > 0", lambda v: torch.isfinite(v) & (v > 0), named)


def check_nonnegative(**named: torch.Tensor) -> None:
    """Require every element of each named tensor to be finite and >= 0."""
    _check_all("finite and >= 0", lambda v: torch.isfinite(v) & (v >= 0), named)


def check_finite(**named: torch.Tensor | float) -> None:
    """Require every element of each named tensor (or float) to be finite (no NaN or inf)."""
    _check_all("finite", torch.isfinite, named)


def is_whole(value: object) -> bool:
    """True for Python and numpy integers, False for bools and everything else (one rule for
    every count: n_paths, n, shard_size, n_pairs, warmup_steps...).

    Examples:
        >>> import numpy as np
        >>> is_whole(3), is_whole(np.int64(3)), is_whole(True), is_whole(3.0)
        (True, True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> None:
    """Require a count: a whole number (:func:`is_whole`) of at least 1; the error names it.

    Examples:
        >>> check_positive_int("n_paths", 0)
        Traceback (most recent call last):
        ...
        ValueError: n_paths must be a positive integer, got 0
    """
    if not is_whole(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_device(device: str | torch.device) -> str:
    """Validate a torch device (a string such as ``"cuda:0"`` or a :class:`torch.device`); a CUDA
    device must exist here. Returns its name.

    Examples:
        >>> check_device("cpu")
        'cpu'
        >>> check_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu'
    """
    try:
        if not isinstance(device, str | torch.device):  # torch.device(1) is cuda:1
            raise TypeError
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}"
        ) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available here")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")  # fmt: skip
    return str(parsed)


def carry_and_discount(
    spot: torch.Tensor, rate: torch.Tensor, dividend: torch.Tensor, maturity: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``spot exp((rate - dividend) maturity)`` and discount ``exp(-rate maturity)``,
    naming ``rate - dividend`` or ``rate`` where either overflows (an overflowing carry surfaced
    as a bad ``forward``, an input the caller never gave, or as a NaN price).

    Examples:
        >>> forward, discount = carry_and_discount(*map(torch.tensor, (100.0, 0.05, 0.0, 1.0)))
        >>> round(float(forward), 4), round(float(discount), 4)
        (105.1271, 0.9512)
        >>> carry_and_discount(*map(torch.tensor, (100.0, 800.0, 0.0, 1.0)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: rate - dividend must be small enough in size for a finite, positive ...
    """
    forward = spot * torch.exp((rate - dividend) * maturity)
    check_where("rate - dividend", rate - dividend, torch.isfinite(forward) & (forward > 0),
                "small enough in size for a finite, positive forward spot * exp((rate - "
                "dividend) * maturity)")  # fmt: skip
    discount = torch.exp(-rate * maturity)
    check_where("rate", rate, torch.isfinite(discount), "above -700 / maturity (the discount "
                "factor exp(-rate * maturity) overflows)")  # fmt: skip
    return forward, discount


def check_seasoning(past_average: float | None, past_weight: float) -> None:
    """Refuse a past weight outside [0, 1), a seasoned Asian without a finite positive past
    average, and a past average without its weight (it was ignored: an unseasoned price).

    Examples:
        >>> check_seasoning(None, 0.0), check_seasoning(101.5, 0.25)
        (None, None)
        >>> check_seasoning(101.5, 0.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: past_average=101.5 needs past_weight > 0, ...
    """
    if not 0.0 <= past_weight < 1.0:
        raise ValueError(f"past_weight must lie in [0, 1), got {past_weight}")
    if past_weight == 0.0 and past_average is not None:
        raise ValueError(f"past_average={past_average} needs past_weight > 0, the weight of the "
                         "past fixings in the average (with 0 it would be ignored)")  # fmt: skip
    if past_weight > 0.0 and not (past_average is not None and 0.0 < past_average < math.inf):
        raise ValueError(f"past_average must be positive and finite when seasoned, got "
                         f"{past_average}")  # fmt: skip


def check_not_bool(**values: object) -> None:
    """Refuse a bool given for a number, naming it: a Python or numpy bool, or a boolean tensor,
    array or list (Python's ``True`` is the integer 1: ``kappa=True`` priced kappa = 1,
    ``sabr(beta=True)`` simulated beta = 1).

    Examples:
        >>> check_not_bool(v0=0.04, rho=[-0.5, 0.2])
        >>> check_not_bool(kappa=True)
        Traceback (most recent call last):
        ...
        ValueError: kappa must be a real number, not a bool, got True
    """
    for name, value in values.items():
        if _is_bool(value):
            raise ValueError(f"{name} must be a real number, not a bool, got {value!r}")


def check_real(**values: object) -> None:
    """Refuse a complex number given for a real one, naming it: a Python or numpy complex, or a
    complex tensor, array or list (torch and numpy cast them to real with a warning, dropping
    the imaginary part: ``forward=torch.tensor(0.03 + 0.01j)`` priced a forward of 0.03).

    Examples:
        >>> check_real(alpha=0.2, rho=[-0.5, 0.2])
        >>> check_real(alpha=0.2 + 0.1j)
        Traceback (most recent call last):
        ...
        ValueError: alpha must be real, not complex, got (0.2+0.1j)
    """
    for name, value in values.items():
        if is_complex(value):
            shown = repr(value)
            if isinstance(value, torch.Tensor):
                shown = f"a {value.dtype} tensor"
            elif np.ndim(value) > 0 and hasattr(value, "dtype"):
                shown = f"a {value.dtype} array"
            raise ValueError(f"{name} must be real, not complex, got {shown}")


def is_complex(value: object) -> bool:
    """True for a Python or numpy complex and for complex arrays, Series, lists and tensors.

    Examples:
        >>> is_complex(1 + 2j), is_complex(np.array([1.0])), is_complex(torch.zeros(1, dtype=torch.cfloat))
        (True, False, True)
    """
    if isinstance(value, torch.Tensor):
        return value.is_complex()
    if isinstance(value, complex | np.complexfloating):
        return True
    kind = getattr(getattr(value, "dtype", None), "kind", None)  # arrays, pandas Series
    if kind is not None:
        return kind == "c"
    if not isinstance(value, list | tuple):
        return False
    try:
        return np.asarray(value).dtype.kind == "c"
    except (TypeError, ValueError, RuntimeError):  # e.g. a ragged list: refused later by name
        return False


def _is_bool(value: object) -> bool:
    """True for a Python or numpy bool and for boolean arrays, lists and tensors."""
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bool
    if not isinstance(value, bool | np.bool_ | np.ndarray | list | tuple):
        return False
    try:
        return np.asarray(value).dtype == np.bool_
    except (TypeError, ValueError, RuntimeError):  # e.g. a ragged list: refused later by name
        return False


def read_json(path: Path, hint: str) -> Any:
    """The JSON value in the UTF-8 file ``path``; a cut or edited file, or one that is not text,
    is a ValueError naming it, where in it the reading stopped, and ``hint`` (what to do about
    it): ``json`` named no file, and a bare ``'utf-8' codec can't decode`` neither.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "plan.json"
        >>> _ = path.write_text('{"n": 4')
        >>> read_json(path, "a cut file?")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: .../plan.json is not valid JSON (Expecting ',' delimiter at line 1, column 8): a cut file?
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column "
                         f"{err.colno}): {hint}") from err  # fmt: skip
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a JSON text file ({err.reason} at byte {err.start}): "
                         f"{hint}") from err  # fmt: skip


def json_safe(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, tuples, numbers, text) with NaN and infinities as None:
    ``json.dumps`` writes them as bare ``NaN`` / ``Infinity``, which strict JSON readers refuse.

    Examples:
        >>> json_safe({"es95": float("nan"), "rows": [1.0, float("inf")], "name": "delta"})
        {'es95': None, 'rows': [1.0, None], 'name': 'delta'}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value
