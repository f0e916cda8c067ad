"""One entry point to calibrate volatility models to quotes: :func:`calibrate`.

Each (model, method) pair is a fitting function in a registry (:func:`register_method`); global
starting points can come from start providers (:func:`register_start`: ``qfnet`` registers its
calibration network for Heston, since ``pricing`` never imports ``qfnet``). The models live in
:mod:`pricing.calibration_heston` (Heston, whole surface) and :mod:`pricing.calibration_sabr`
(SABR, one smile per expiry). Every fit minimises the weighted sum of squared implied-vol errors
and returns a :class:`CalibrationResult` with per-quote residuals.
"""

from __future__ import annotations

import difflib
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pricing._calibration_batch import (
    RESIDUAL_QUOTE_COLUMNS,
    already_prepared,
    in_domain,
    residual_tables,
)
from pricing._validation import (
    check_bounds_in_domain,
    check_device,
    check_real,
    is_complex,
    is_whole,
    outside_domain,
)
from pricing.quote_cleaning import prepare_quotes, prepared_notes
from pricing.quotes import (
    DECIMAL_LIMITS,
    QuoteError,
    QuoteWarning,
    call_flags,
    read_quotes,
    shifts,
)

__all__ = [
    "MODEL_PARAMETERS",
    "WEIGHTINGS",
    "CalibrationProblem",
    "CalibrationResult",
    "FitOutput",
    "available_methods",
    "bounds_reached",
    "calibrate",
    "calibrate_many",
    "check_bounds",
    "check_method_device",
    "check_start_in_box",
    "methods_needing_import",
    "model_vols",
    "proposed_starts",
    "proposed_starts_many",
    "quote_weights",
    "register_batch_method",
    "register_method",
    "register_start",
]

RESIDUAL_COLUMNS = (*RESIDUAL_QUOTE_COLUMNS, "model_iv", "error_bp", "weight")


@dataclass(frozen=True)
class CalibrationProblem:
    """What a fitting function receives: prepared quotes, weights and the caller's options.

    Attributes:
        quotes: table with ``strike, maturity, forward, discount, market_iv, option_type, spot``
            (and ``bid_iv``/``ask_iv`` where known), one row per quote used, index 0..N-1.
        weights: weight per quote, shape ``(N,)``, mean 1.
        bounds: parameter name -> (lower, upper), overriding the model's defaults.
        x0: starting parameters (name -> value), tried alongside the global start.
        beta: SABR beta (None: fixed at 1.0 unless ``free_beta``).
        seed: seed of the global-start sampling.
        options: further method options (e.g. ``max_iterations``, ``n_starts``).

    Examples:
        >>> quotes = pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0, "market_iv": 0.2})
        >>> problem = CalibrationProblem(quotes, np.ones(2), options={"n_starts": 4})
        >>> problem.weights.shape, problem.seed, problem.options["n_starts"]
        ((2,), 0, 4)
    """

    quotes: pd.DataFrame
    weights: np.ndarray
    bounds: Mapping[str, tuple[float, float]] | None = None
    x0: Mapping[str, float] | None = None
    beta: float | None = None
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FitOutput:
    """What a fitting function returns (the driver adds timing and residual statistics).

    ``at_bounds``: the parameters that ended on a bound of the fitter's box
    (:func:`bounds_reached`); None where the fitter does not say.

    Examples:
        >>> out = FitOutput({"v0": 0.04}, np.array([0.2, 0.21]), converged=True, iterations=12)
        >>> out.model_iv.shape, out.converged, out.at_bounds
        ((2,), True, None)
    """

    params: dict[str, Any]
    model_iv: np.ndarray
    converged: bool
    iterations: int | None
    at_bounds: dict[str, Any] | None = None


BOUND_TOLERANCE = 1e-6
"""A parameter this close to a bound, relative to its box's width (to the bound's size, at
least 1, where the box is unbounded on the other side), ended on that bound."""


def _reach(width: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """How close to ``bound`` is on it (:data:`BOUND_TOLERANCE`)."""
    return BOUND_TOLERANCE * np.where(np.isfinite(width), width, np.maximum(1.0, np.abs(bound)))


def bounds_reached(
    names: Sequence[str],
    values: np.ndarray,
    lower: np.ndarray | torch.Tensor,
    upper: np.ndarray | torch.Tensor,
) -> dict[str, Any]:
    """The parameters that ended on a bound of their box (a sign of a poor fit or of a box too
    narrow for the quotes: a kappa pinned at its upper bound), for :attr:`FitOutput.at_bounds`.

    Args:
        names: the parameter names, in the order of the last axis.
        values: fitted parameters, ``(P,)`` (one set) or ``(E, P)`` (one per SABR expiry).
        lower: lower bounds, broadcastable to ``values``.
        upper: upper bounds, broadcastable to ``values``; a parameter with ``lower == upper``
            is fixed, not fitted, and never listed.

    Returns:
        name -> ``"lower"`` or ``"upper"`` for ``(P,)`` values; for ``(E, P)`` values name -> one
        entry per expiry, ``"lower"``, ``"upper"`` or None. Parameters on no bound are left out.

    Examples:
        >>> bounds_reached(["kappa", "rho"], np.array([50.0, -0.5]), np.array([1e-3, -0.999]),
        ...                np.array([50.0, 0.999]))
        {'kappa': 'upper'}
        >>> bounds_reached(["nu"], np.array([[0.4], [1e-8]]), np.array([1e-8]), np.array([10.0]))
        {'nu': [None, 'lower']}
    """
    v, lo, hi = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (values, lower, upper)))
    width = hi - lo
    at_lower = np.isfinite(lo) & (v - lo <= _reach(width, lo))
    at_upper = np.isfinite(hi) & (hi - v <= _reach(width, hi)) & ~at_lower
    fitted = width > 0
    flags = np.where(fitted & at_lower, "lower", np.where(fitted & at_upper, "upper", ""))
    if flags.ndim == 1:
        return {name: str(flag) for name, flag in zip(names, flags, strict=True) if flag}
    return {name: [str(f) or None for f in column]
            for name, column in zip(names, flags.T, strict=True) if column.any()}  # fmt: skip


def check_start_in_box(
    x0: Mapping[str, float] | None,
    box: Mapping[str, tuple[float, float]],
    *,
    method: str,
    widen: str | None = None,
) -> None:
    """Refuse a start outside the box a fitter searches, naming the parameter, its value, the box
    and how to widen it: such a start was clipped into the box without a word (a kappa of 80
    started at the default box's 50), where scipy's ``least_squares`` refuses it.

    Args:
        x0: starting parameters, name -> value (None: nothing to check).
        box: name -> (lower, upper) of the fitter's box; a name left out is not bounded.
        method: the fitter, as the message names it (``"heston 'direct'"``).
        widen: how to reach a start outside the box, for the message; None: pass ``bounds``
            (the default box gives way to the caller's bounds).

    Raises:
        ValueError: a start outside the box.

    Examples:
        >>> check_start_in_box({"kappa": 1.5}, {"kappa": (1e-3, 50.0)}, method="heston 'direct'")
        >>> try:
        ...     check_start_in_box({"kappa": 80.0}, {"kappa": (1e-3, 50.0)}, method="heston 'direct'")
        ... except ValueError as error:
        ...     for part in str(error).split("; "):
        ...         print(part)
        x0['kappa']: 80 is outside the box [0.001, 50] of heston 'direct'
        pass bounds={'kappa': (0.001, 80.0)} to widen it
    """
    for name, value in (x0 or {}).items():
        low, high = (float(b) for b in box.get(name, (-np.inf, np.inf)))
        start = float(value)
        if low <= start <= high:
            continue
        ends = [repr(start) if start < low else f"{low:.12g}",
                repr(start) if start > high else f"{high:.12g}"]  # fmt: skip
        hint = widen or f"pass bounds={{{name!r}: ({ends[0]}, {ends[1]})}} to widen it"
        raise ValueError(f"x0[{name!r}]: {start:g} is outside the box [{low:g}, {high:g}] of "
                         f"{method}; {hint}")  # fmt: skip


@dataclass(frozen=True)
class CalibrationResult:
    """Calibrated parameters and the quality of the fit.

    Attributes:
        model: ``heston`` or ``sabr``.
        method: the fitting method used.
        params: Heston: name -> value; SABR: name -> list with one entry per expiry (``maturity``,
            ``forward``, ``alpha``, ``beta``, ``rho``, ``nu``, ``shift``).
        residuals: one row per quote with the columns of :data:`RESIDUAL_COLUMNS` (quotes of
            weight 0 included, with their weight).
        rmse_iv_bp: root-mean-square implied-vol error in basis points over the quotes used
            in the fit (unweighted: each counts alike) that have a model vol (a warning counts
            those without one, e.g. whose model price underflows; NaN where none has one).
        max_abs_iv_bp: largest absolute implied-vol error in basis points of those quotes.
        sse: sum of ``(100 * IV error)^2`` over them (QuantLib's convention, vols in decimals).
        n_quotes: quotes used in the fit: those of positive weight (a quote weighted 0 is left
            out of the fit and of these statistics).
        n_dropped: input rows left out for want of a market implied vol (rows of weight 0 stay
            in ``residuals``, outside ``n_quotes``; the CLI's JSON counts every input row the
            fit did not use, cleaning's removals and weights of 0 included).
        seconds: wall time of the fit.
        converged: the optimiser stopped on a tolerance (MINPACK's: the step shrank below
            ``xtol`` counts), not on its iteration limit nor at its damping limit (no step
            lowered the cost). ``network``, which does not optimise: its answer drew none of
            its warnings (quotes that leave part of its grid to extrapolation, an answer at the
            edge of its training box or clipped to ``bounds``).
        iterations: optimiser iterations (0 for ``network``, one forward pass; None where the
            method does not report them).
        at_bounds: the parameters that ended on a bound of the method's box (a kappa pinned at
            its upper bound is a sign of a poor fit): Heston name -> ``"lower"`` or ``"upper"``;
            SABR name -> one entry per expiry (as in ``params``), ``"lower"``, ``"upper"`` or
            None. Empty when none did; None where the method does not say (``network``, whose
            edge warning says it). Boxes: ``direct`` and ``surrogate``, the model's default box
            or ``bounds``; Heston ``quantlib``, QuantLib's own constraint (v0, kappa, theta,
            sigma > 0, rho in [-1, 1]); a fixed SABR beta is not listed. See
            :func:`bounds_reached`.

    Examples:
        >>> result = CalibrationResult("heston", "direct", {"v0": 0.04}, pd.DataFrame(), 12.5,
        ...     30.0, 0.1, 20, 0, 0.5, True, 42)
        >>> summary = result.to_dict()
        >>> summary["rmse_iv_bp"], "residuals" in summary
        (12.5, False)
    """

    model: str
    method: str
    params: dict[str, Any]
    residuals: pd.DataFrame
    rmse_iv_bp: float
    max_abs_iv_bp: float
    sse: float
    n_quotes: int
    n_dropped: int
    seconds: float
    converged: bool
    iterations: int | None
    at_bounds: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (everything except the residual table)."""
        keys = ("model", "method", "params", "rmse_iv_bp", "max_abs_iv_bp", "sse", "n_quotes")
        keys += ("n_dropped", "seconds", "converged", "iterations", "at_bounds")
        return {key: getattr(self, key) for key in keys}


FitFunction = Callable[[CalibrationProblem], FitOutput]
_REGISTRY: dict[tuple[str, str], FitFunction] = {}
_UNAVAILABLE: dict[tuple[str, str], str] = {}
_ON_DEVICES: set[tuple[str, str]] = set()
"""The methods that take a ``device`` option (the others run on the CPU only)."""
_OPTIONS: dict[tuple[str, str], tuple[str, ...]] = {}
"""The options each method takes besides ``device`` (a method registered without them is not
checked)."""


def register_method(
    model: str,
    method: str,
    function: FitFunction | None,
    why: str = "",
    *,
    devices: bool = False,
    options: Sequence[str] | None = None,
) -> None:
    """Register the fitter of ``(model, method)``; ``None`` marks it unavailable, saying ``why``.

    ``devices``: the fitter (and its batch fitter) takes the ``device`` option, a
    :class:`torch.device` (:func:`calibrate` checks it and drops ``device="cpu"`` for the other
    methods, refusing any other device for them).

    ``options``: the names of the method options the fitter takes besides ``device``;
    :func:`calibrate` refuses any other by name before fitting (a misspelt option reached the
    fitter as a ``TypeError``). None: the fitter checks its own.

    Examples:
        >>> def flat(problem):
        ...     iv = problem.quotes["market_iv"].to_numpy()
        ...     return FitOutput({"vol": float(iv.mean())}, np.full_like(iv, iv.mean()), True, 0)
        >>> register_method("toy", "flat", flat)
        >>> available_methods("toy")
        ['flat']
        >>> del _REGISTRY[("toy", "flat")]  # keep the example free of side effects
    """
    if function is None:
        if (model, method) not in _REGISTRY:  # never hide a real implementation
            _UNAVAILABLE[(model, method)] = why
    else:
        _REGISTRY[(model, method)] = function
        _UNAVAILABLE.pop((model, method), None)
        if options is None:
            _OPTIONS.pop((model, method), None)
        else:
            _OPTIONS[(model, method)] = tuple(sorted(options))
    if function is not None and devices:  # _device_options lists registered methods only
        _ON_DEVICES.add((model, method))
    elif function is not None:
        _ON_DEVICES.discard((model, method))


StartProvider = Callable[[CalibrationProblem], Mapping[str, float] | None]
ManyStartProvider = Callable[[Sequence[CalibrationProblem]], Sequence[Mapping[str, float] | None]]
_STARTS: dict[str, dict[str, tuple[StartProvider, ManyStartProvider | None]]] = {}


def register_start(
    model: str,
    name: str,
    provider: StartProvider | None,
    *,
    many: ManyStartProvider | None = None,
) -> None:
    """Register (``None``: remove) a global-start provider for ``model``.

    A provider maps a :class:`CalibrationProblem` to starting parameters (name -> value) or None
    (no proposal for these quotes). Fitters that use global starts (Heston ``direct`` and
    ``surrogate``) try the proposals first, with a smaller Sobol scan kept as a safety net.
    ``many``, optional, does the same for a sequence of problems at once (one list entry per
    problem); :func:`proposed_starts_many` uses it instead of calling ``provider`` per problem.

    Examples:
        >>> register_start("toy", "flat", lambda problem: {"vol": 0.2})
        >>> proposed_starts("toy", CalibrationProblem(pd.DataFrame(), np.ones(0)))
        [{'vol': 0.2}]
        >>> register_start("toy", "flat", None)
        >>> proposed_starts("toy", CalibrationProblem(pd.DataFrame(), np.ones(0)))
        []
    """
    providers = _STARTS.setdefault(model, {})
    if provider is None:
        providers.pop(name, None)
    else:
        providers[name] = (provider, many)


def proposed_starts(model: str, problem: CalibrationProblem) -> list[dict[str, float]]:
    """Starting points from the registered providers of ``model`` (in registration order).

    Examples:
        >>> register_start("toy", "a", lambda problem: {"vol": 0.1})
        >>> register_start("toy", "b", lambda problem: None)  # no proposal for these quotes
        >>> proposed_starts("toy", CalibrationProblem(pd.DataFrame(), np.ones(0)))
        [{'vol': 0.1}]
        >>> register_start("toy", "a", None); register_start("toy", "b", None)
    """
    return proposed_starts_many(model, [problem])[0]


def proposed_starts_many(
    model: str, problems: Sequence[CalibrationProblem]
) -> list[list[dict[str, float]]]:
    """:func:`proposed_starts` of each problem, asking each provider once for all of them where
    it was registered with ``many``.

    Examples:
        >>> one = lambda problem: {"vol": float(len(problem.quotes))}
        >>> calls = []
        >>> def many(problems):
        ...     calls.append(len(problems))
        ...     return [one(p) for p in problems]
        >>> register_start("toy", "a", one, many=many)
        >>> problems = [CalibrationProblem(pd.DataFrame({"x": [1.0] * n}), np.ones(n)) for n in (1, 2)]
        >>> proposed_starts_many("toy", problems), calls
        ([[{'vol': 1.0}], [{'vol': 2.0}]], [2])
        >>> register_start("toy", "a", None)
    """
    out: list[list[dict[str, float]]] = [[] for _ in problems]
    for provider, many in _STARTS.get(model, {}).values():
        starts = many(problems) if many is not None else [provider(p) for p in problems]
        for found, start in zip(out, starts, strict=True):
            if start is not None:
                found.append({name: float(value) for name, value in start.items()})
    return out


BatchFitFunction = Callable[[list[CalibrationProblem]], list[FitOutput]]
_BATCH_REGISTRY: dict[tuple[str, str], BatchFitFunction] = {}


def register_batch_method(model: str, method: str, function: BatchFitFunction) -> None:
    """Register a fitter of many problems at once for :func:`calibrate_many` (the single-table
    fitter of the same method must be registered too).

    Examples:
        >>> def flat(problem):
        ...     iv = problem.quotes["market_iv"].to_numpy()
        ...     return FitOutput({"vol": [float(iv.mean())]}, np.full_like(iv, iv.mean()), True, 0)
        >>> calls = []
        >>> def flat_batch(problems):
        ...     calls.append(len(problems))
        ...     return [flat(p) for p in problems]
        >>> register_method("sabr", "toy", flat)
        >>> register_batch_method("sabr", "toy", flat_batch)
        >>> table = pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0, "forward": 100.0,
        ...                       "discount": 1.0, "implied_vol": [0.22, 0.18]})
        >>> [fit.params["vol"] for fit in calibrate_many("sabr", [table, table], method="toy")]
        [[0.2], [0.2]]
        >>> calls  # one call for both tables
        [2]
        >>> del _REGISTRY[("sabr", "toy")], _BATCH_REGISTRY[("sabr", "toy")]
    """
    _BATCH_REGISTRY[(model, method)] = function


def available_methods(model: str) -> list[str]:
    """Methods registered for ``model`` (``heston`` or ``sabr``).

    Examples:
        >>> "direct" in available_methods("heston")
        True
    """
    _load_models()
    return sorted(m for (name, m) in _REGISTRY if name == model)


def methods_needing_import(model: str) -> list[str]:
    """Methods of ``model`` that exist once qfnet registers them (e.g. Heston ``surrogate``).

    Examples:
        >>> "surrogate" in methods_needing_import("heston") + available_methods("heston")
        True
    """
    _load_models()
    return sorted(m for (name, m) in _UNAVAILABLE if name == model)


def _load_models() -> None:
    # The model modules register their methods on import.
    import pricing.calibration_heston
    import pricing.calibration_sabr  # noqa: F401


def _black_vega(quotes: pd.DataFrame) -> np.ndarray:
    """Black vega ``D F phi(d1) sqrt(T)`` at the market vol; of shifted Black (``F + shift``,
    ``K + shift``) where the quotes have a ``shift``, whose vols are shifted-lognormal."""
    f, k, t, d, vol = (
        quotes[c].to_numpy(float)
        for c in ("forward", "strike", "maturity", "discount", "market_iv")
    )
    shift = shifts(quotes).to_numpy(float)
    f, k = f + shift, k + shift
    s = vol * np.sqrt(t)
    d1 = np.log(f / k) / s + s / 2
    return d * f * np.exp(-0.5 * d1 * d1) / np.sqrt(2 * np.pi) * np.sqrt(t)


WEIGHTINGS = ("equal", "vega", "spread")
"""The named weightings of :func:`quote_weights`."""


def quote_weights(quotes: pd.DataFrame, weights: str | Sequence[float] | np.ndarray) -> np.ndarray:
    """Weights of the implied-vol errors, normalised to mean 1.

    Args:
        quotes: prepared quotes (``market_iv``, ``forward``, ``discount``; ``bid_iv``/``ask_iv``
            for ``spread``).
        weights: ``"equal"``; ``"vega"`` (Black vega: errors near the money count more; vega
            squared would make them count like price errors, ``price error ~ vega * vol error``);
            ``"spread"`` (inverse bid-ask spread in vol); or one non-negative weight per quote.

    Examples:
        >>> table = pd.DataFrame({"market_iv": [0.2, 0.2], "bid_iv": [0.19, 0.18],
        ...                       "ask_iv": [0.21, 0.22]})
        >>> quote_weights(table, "spread").round(6).tolist()
        [1.333333, 0.666667]
    """
    if isinstance(weights, str):
        if weights == "equal":
            raw = np.ones(len(quotes))
        elif weights == "vega":
            raw = _black_vega(quotes)
        elif weights == "spread":
            if not {"bid_iv", "ask_iv"} <= set(quotes.columns):
                raise QuoteError("weights='spread' needs bid and ask quotes", column="bid")
            spread = (quotes["ask_iv"] - quotes["bid_iv"]).to_numpy(float)
            floor = np.nanmedian(spread[spread > 0]) * 1e-2 if np.any(spread > 0) else 1e-4
            raw = 1 / np.where(np.isfinite(spread) & (spread > floor), spread, np.nan)
            if not np.isfinite(raw).any():  # equal weights were fitted without a word
                raise QuoteError("weights='spread' needs bid and ask quotes: no quote has a "
                                 "bid_iv below its ask_iv", column="bid")  # fmt: skip
            raw = np.where(np.isfinite(raw), raw, np.nanmedian(raw))
        else:
            raise ValueError(f"weights must be 'equal', 'vega' or 'spread', got {weights!r}")
    else:
        try:
            raw = np.asarray(weights, dtype=float)
        except (TypeError, ValueError):  # a dict: float()'s TypeError named no argument
            raw = np.array(np.nan)
        if raw.shape != (len(quotes),) or not np.all(np.isfinite(raw) & (raw >= 0)):
            raise ValueError(f"weights must be {len(quotes)} finite values >= 0")
    if not raw.sum() > 0:
        raise ValueError("weights are all zero: at least one quote needs a positive weight")
    return raw / raw.mean()


MODEL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "heston": ("v0", "kappa", "theta", "sigma", "rho"),
    "sabr": ("alpha", "beta", "rho", "nu"),
}
"""Each model's parameters, in the order the fitters use."""


def _finite_number(value: object) -> bool:
    """A finite real number: Python, numpy or a 0-d tensor; not a string ("0.2" passed
    ``float()`` and then failed inside torch), a bool (``v0=True`` started at 1) nor a complex."""
    if isinstance(value, str | bytes | bool | np.bool_) or np.ndim(value) != 0:
        return False
    if is_complex(value):  # float() took a numpy or torch complex's real part, with a warning
        return False
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


_COUNT_OPTIONS = {"n_starts": 1, "n_scan": 0, "max_iterations": 1, "nodes": 1,
                  "polish_iterations": 1, "integration_order": 1}  # fmt: skip
"""Whole-number method options and their least values."""


def _check_option_names(key: tuple[str, str], options: Mapping[str, Any]) -> None:
    """Options the method does not take (:func:`register_method`'s ``options``), named with the
    ones it does (``foo=1`` reached the fitter as a ``TypeError``; ``polish`` to Heston
    ``quantlib`` too, and Heston ``surrogate`` ignored ``nodes``)."""
    accepted = _OPTIONS.get(key)
    unknown = sorted(set(options) - set(accepted or ()) - {"device"})
    if accepted is None or not unknown:
        return
    hints = [f"{close[0]!r} for {name!r}" for name in unknown
             for close in [difflib.get_close_matches(name, accepted, n=1)] if close]  # fmt: skip
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    raise ValueError(f"method {key[1]!r} for {key[0]} takes no option "
                     f"{', '.join(map(repr, unknown))}{hint}; its options: "
                     f"{', '.join(accepted) or 'none'} (and device)")  # fmt: skip


def _check_options(options: Mapping[str, Any]) -> None:
    """Method options of the wrong kind name themselves (n_starts=0 failed in a tensor op,
    -1 was accepted; free_beta="no" was truthy)."""
    for name, least in _COUNT_OPTIONS.items():
        if name in options:
            value = options[name]
            if not is_whole(value) or value < least:
                raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    tolerance = options.get("tolerance", 1.0)
    if not (_finite_number(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be a finite number > 0, got {tolerance!r}")
    for name in ("free_beta", "polish"):  # polish="no" was truthy: it polished
        if name in options and not isinstance(options[name], bool | np.bool_):
            raise ValueError(f"{name} must be True or False, got {options[name]!r}")


def check_method_device(model: str, method: str, device: str | torch.device | None) -> None:
    """Raise ``ValueError`` unless ``method`` for ``model`` can run on ``device`` here (the check
    :func:`calibrate` makes of its ``device`` option, for callers that must fail before reading
    any quotes).

    Examples:
        >>> check_method_device("sabr", "direct", "cpu")
        >>> check_method_device("heston", "direct", "gpu")
        Traceback (most recent call last):
        ...
        ValueError: device must be a torch device such as 'cpu' or 'cuda:0', got 'gpu'
    """
    _device_options(_method_key(model, method), {"device": device})


def _device_options(key: tuple[str, str], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with ``device`` checked: a torch device (string or :class:`torch.device`)
    that exists here, the CPU or CUDA (the fits run in float64), and the CPU for methods not
    registered with ``devices=True``. Returned as a :class:`torch.device` for the methods that
    take it, dropped for the others (so ``device="cpu"`` is accepted by every method)."""
    out = dict(options)
    if out.get("device", "cpu") is None:  # None means the default, as in the simulators
        del out["device"]
    if "device" not in out:
        return out
    value = out.pop("device")
    device = torch.device(check_device(value))
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: calibration runs in float64 on 'cpu' or 'cuda', got {value!r}")
    if key in _ON_DEVICES:
        out["device"] = device
    elif device.type != "cpu":
        able = ", ".join(f"{model} {method!r}" for model, method in sorted(_ON_DEVICES)
                         if (model, method) in _REGISTRY)  # fmt: skip
        raise ValueError(f"device={value!r}: method {key[1]!r} for {key[0]} runs on the CPU "
                         f"only (other devices: {able or 'none'})")  # fmt: skip
    return out


def _check_inputs(
    key: tuple[str, str],
    bounds: Mapping[str, tuple[float, float]] | None,
    x0: Mapping[str, float] | None,
    beta: float | None,
    seed: int,
    options: Mapping[str, Any],
) -> None:
    """Reject options the method ``key`` does not take, parameter names the model does not have,
    malformed or inverted bounds, partial or non-finite starts and contradictory SABR beta
    settings, naming the field."""
    model = key[0]
    if model == "heston" and (beta is not None or "free_beta" in options):
        raise ValueError("beta and free_beta are SABR options; Heston has no beta")
    _check_option_names(key, options)
    _check_options(options)
    if not is_whole(seed):  # "1" and 1.5 failed in torch's manual_seed
        raise ValueError(f"seed must be a whole number, got {seed!r}")
    for name, value in (("bounds", bounds), ("x0", x0)):
        if value is not None and not isinstance(value, Mapping):  # a list: AttributeError
            raise TypeError(f"{name}: expected a mapping of parameter names, got "
                            f"{type(value).__name__}")  # fmt: skip
    check_bounds(model, bounds)
    names = MODEL_PARAMETERS[model]
    expected = f"expected {', '.join(names)}"
    if x0 is not None:
        unknown = sorted(set(x0) - set(names))
        needed = [n for n in names if n not in x0 and not (model == "sabr" and n == "beta")]
        if unknown or needed:
            what = f"unknown {unknown}" if unknown else f"missing {needed}"
            raise ValueError(f"x0: {what} ({expected}{'; beta optional' * (model == 'sabr')})")
        bad = [n for n, v in x0.items() if not _finite_number(v)]
        if bad:
            raise ValueError(f"x0[{bad[0]!r}]: must be a finite number, got {x0[bad[0]]!r}")
        for name, value in x0.items():
            domain = outside_domain(name, float(value), float(value))
            if domain:
                raise ValueError(f"x0[{name!r}]: {float(value):g} is outside {domain}")
            low, high = (bounds or {}).get(name, (-np.inf, np.inf))
            if not float(low) <= float(value) <= float(high):  # was clipped into the box unsaid
                raise ValueError(f"x0[{name!r}]: {float(value):g} is outside bounds "
                                 f"[{float(low):g}, {float(high):g}]")  # fmt: skip
    if model == "sabr":
        _check_sabr_beta(beta, bounds, x0, bool(options.get("free_beta", False)))


def check_bounds(model: str, bounds: Mapping[str, tuple[float, float]] | None) -> None:
    """Refuse bounds on a parameter ``model`` does not have, malformed or inverted ones and ones
    that leave the parameter's domain, naming the field (the check :func:`calibrate` makes; SABR's
    fitters make it too, where an unknown name was ignored and an inverted pair fixed the
    parameter at its upper end without a word).

    Examples:
        >>> check_bounds("sabr", {"rho": (0.5, -0.5)})
        Traceback (most recent call last):
        ...
        ValueError: bounds['rho']: lower 0.5 is not <= upper -0.5
    """
    names = MODEL_PARAMETERS[model]
    for name, pair in (bounds or {}).items():
        if name not in names:
            raise ValueError(f"bounds: {model} has no parameter {name!r} (expected "
                             f"{', '.join(names)})")  # fmt: skip
        check_real(**{f"bounds[{name!r}]": pair})  # float() dropped a numpy imaginary part
        try:
            low, high = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"bounds[{name!r}]: expected (lower, upper), got {pair!r}") from None
        if not low <= high:  # NaN too
            raise ValueError(f"bounds[{name!r}]: lower {low} is not <= upper {high}")
        check_bounds_in_domain(name, low, high)


def _check_sabr_beta(
    beta: float | None,
    bounds: Mapping[str, tuple[float, float]] | None,
    x0: Mapping[str, float] | None,
    free: bool,
) -> None:
    """SABR's beta settings agree: a fixed beta (``beta``, default 1) or a fitted one
    (``free``), bounds on beta only when fitted, a start's beta only at the fixed value (it was
    clipped to the fixed beta without a word)."""
    check_real(beta=beta)  # float() dropped a numpy complex's imaginary part
    if isinstance(beta, bool | np.bool_):  # True fixed beta = 1 for a caller who meant "fit it"
        raise ValueError(f"beta: must be a number in [0, 1], not a bool (free_beta=True fits "
                         f"beta), got {beta!r}")  # fmt: skip
    if beta is not None and not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta: must be in [0, 1], got {beta!r}")
    if beta is not None and free:
        raise ValueError(f"beta={beta} fixes SABR beta and free_beta fits it: pass one")
    if "beta" in (bounds or {}) and not free:
        raise ValueError("bounds['beta'] needs free_beta=True (beta is fixed otherwise)")
    from pricing.calibration_sabr import DEFAULT_BETA  # imports this module

    fixed = DEFAULT_BETA if beta is None else float(beta)
    if x0 is not None and "beta" in x0 and not free and float(x0["beta"]) != fixed:
        raise ValueError(
            f"x0['beta']: {float(x0['beta']):g} differs from the fixed beta "
            f"{fixed:g} (pass beta= to fix it there, or free_beta=True to fit it)"
        )


def _check_prepared(table: pd.DataFrame) -> None:
    """The checks a prepared table skipped with ``read_quotes``: vols finite, positive and in
    decimals (percent vols were fitted, at 9,693 bp), option types call or put, strikes,
    forwards, maturities and discounts finite and > 0 (strike and forward after the shift: a
    maturity of 0 was fitted as a smile of its own by SABR ``quantlib``, a discount of -1 kept,
    and a negative strike failed in the pricer at the index of a padded batch)."""
    for column, ok in in_domain(table).items():
        bad = np.flatnonzero(~ok)
        if bad.size:
            i = int(bad[0])
            need = "finite" if column == "shift" else "finite and > 0"
            if column in ("strike", "forward") and "shift" in table:
                need += " after adding the shift"
            raise QuoteError(f"must be {need}, got {float(table[column].iloc[i]):g}", row=i + 1,
                             column=column)  # fmt: skip
    vol = table["market_iv"].to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isnan(vol) & ~((vol > 0) & (vol <= DECIMAL_LIMITS["implied_vol"])))
    if bad.size:
        i = int(bad[0])
        raise QuoteError(f"must be a vol in decimals, > 0 and at most "
                         f"{DECIMAL_LIMITS['implied_vol']:g}, got {vol[i]}", row=i + 1,
                         column="market_iv")  # fmt: skip
    call_flags(table["option_type"])


def _check_model_quotes(model: str, table: pd.DataFrame) -> None:
    """Refuse shifted-lognormal quotes (a ``shift`` other than 0) for Heston, whose vols are
    lognormal: they were fitted as lognormal vols of the unshifted strikes without a word (a
    Heston fit of 24 bp to an exact shifted SABR smile), and a strike at or below 0 failed in
    the pricer at the index of a padded batch, or in QuantLib with a ``RuntimeError``."""
    if model != "heston" or "shift" not in table:
        return
    shift = shifts(table).to_numpy(dtype=float)
    if np.any(shift != 0.0):  # no row named: cleaning may have moved the rows
        raise QuoteError(f"Heston fits lognormal vols; these are shifted-lognormal (shift "
                         f"{shift[shift != 0.0][0]:g}): fit SABR, or give quotes without a shift",
                         column="shift")  # fmt: skip


_NEEDED = ("strike", "maturity", "forward", "discount", "market_iv", "option_type")
"""The columns of a prepared quote table (one without all of them goes through ``read_quotes``,
which names what is missing)."""


def _prepare(quotes: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, int]:
    """Quotes with market implied vols; rows without one are dropped and counted."""
    table, usable = _prepare_rows(quotes)
    return table, int((~usable).sum())


def _unusable(column: pd.Series | pd.DataFrame) -> bool:
    """A needed column with a gap, repeated (a DataFrame) or complex: ``read_quotes`` names the
    problem (a repeated ``strike`` or ``market_iv`` failed in numpy, naming neither; a complex
    one was cast to real). The array's
    ``isna`` costs half the Series' (which builds a Series), on every fit."""
    if isinstance(column, pd.DataFrame) or column.dtype.kind == "c":  # read_quotes refuses it
        return True
    return bool(column.array.isna().any())


def _prepare_rows(
    quotes: pd.DataFrame | str | Path, where: str = ""
) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`_prepare`, with which input rows were kept ``(R,)`` in place of their count.

    A prepared table's ``market_iv`` is refreshed from ``implied_vol`` where that is given (the
    canonical column: a caller who edits it after cleaning fits what they edited). One it
    prepares warns the notes of its forwards and maturities (:func:`_warn_notes`; ``where``
    leads each)."""
    table = quotes if isinstance(quotes, pd.DataFrame) else read_quotes(quotes)
    if not set(_NEEDED) <= set(table.columns) or any(_unusable(table[c]) for c in _NEEDED):
        table = read_quotes(table, allow_crossed=True)
        table, sources = prepare_quotes(table)
        _warn_notes(table, sources, where)
    else:
        if "implied_vol" in table:
            given = table["implied_vol"].to_numpy(dtype=float)
            stale = np.isfinite(given) & (given != table["market_iv"].to_numpy(dtype=float))
            if stale.any():
                table = table.assign(
                    market_iv=np.where(np.isfinite(given), given, table["market_iv"])
                )
        _check_prepared(table)
    usable = table["market_iv"].notna().to_numpy()
    if not usable.all() or not table.index.equals(pd.RangeIndex(len(table))):
        table = table.loc[usable].reset_index(drop=True)
    if len(table) == 0:
        raise QuoteError("no quote has a market implied vol", column="market_iv")
    return table, usable


def _warn_notes(table: pd.DataFrame, sources: dict[str, int], where: str) -> None:
    """Warn (:class:`pricing.quotes.QuoteWarning`) the notes that cleaning's report and the
    CLI print of a table :func:`pricing.quote_cleaning.prepare_quotes` prepared
    (:func:`pricing.quote_cleaning.prepared_notes`: forwards carried at a rate read as 0, a
    given discount its parity slope disagrees with, maturities in days read as years); a caller
    of :func:`calibrate` got no word of them."""
    for note in prepared_notes(table, sources):  # warn, _prepare_rows, calibrate: the caller's
        warnings.warn(f"{where}{note}", QuoteWarning, stacklevel=4)


Weights = str | Sequence[float] | np.ndarray
"""The weights of one quote table: a name of :data:`WEIGHTINGS` or one weight per quote."""


def _kept_weights(weights: Weights, usable: np.ndarray) -> Weights:
    """``weights`` of the rows kept ``usable`` ``(R,)``, where they are one weight per input row:
    the rows left out take theirs with them (the kept rows got the weights of the rows before
    them, or a count error)."""
    if isinstance(weights, str) or usable.all() or np.shape(weights) != usable.shape:
        return weights
    return np.asarray(weights, dtype=float)[usable]


def _weights_per_table(weights: Weights | Sequence[Weights], n_tables: int) -> list[Weights]:
    """The weights of each of ``n_tables`` tables: one name, or one array of numbers, for all of
    them; or a sequence of ``n_tables`` entries, each a name or an array (surfaces with different
    numbers of quotes need their own arrays)."""
    if isinstance(weights, str) or not isinstance(weights, Sequence | np.ndarray):
        return [weights] * n_tables  # a name, or a number (list() raised a TypeError) for each
    entries = list(weights)
    if all(not isinstance(w, str | bytes) and np.ndim(w) == 0 for w in entries):
        return [weights] * n_tables  # one array of numbers for every table
    if len(entries) != n_tables:
        raise ValueError(f"weights: {len(entries)} entries for {n_tables} quote tables (give one "
                         "weighting for all tables, or one per table)")  # fmt: skip
    return entries


def calibrate(
    model: str,
    quotes: pd.DataFrame | str | Path,
    *,
    method: str = "direct",
    weights: Weights = "equal",
    bounds: Mapping[str, tuple[float, float]] | None = None,
    x0: Mapping[str, float] | None = None,
    beta: float | None = None,
    seed: int = 0,
    **options: Any,
) -> CalibrationResult:
    """Calibrate ``model`` to quotes by minimising weighted squared implied-vol errors.

    Args:
        model: ``"heston"`` (one parameter set for the whole surface) or ``"sabr"`` (one smile
            per expiry).
        quotes: a quote table or file (see :func:`pricing.quotes.read_quotes`); forwards, discount
            factors and market vols are derived when absent (:func:`pricing.quote_cleaning.
            prepare_quotes`; what that assumed, such as a rate read as 0 or maturities in days,
            is warned as a :class:`pricing.quotes.QuoteWarning`). Clean it first with
            :func:`pricing.quote_cleaning.clean_quotes`. Heston refuses a ``shift`` other than 0
            (shifted-lognormal vols).
        method: see :func:`available_methods`: ``direct`` (our differentiable pricer, exact
            Jacobian, Levenberg-Marquardt, global start) or ``quantlib`` (the reference).
        weights: ``"equal"``, ``"vega"``, ``"spread"`` or one weight per quote (per row of
            ``quotes``, or per row kept where rows without a market vol are left out).
        bounds: parameter name -> (lower, upper), replacing the model's default box.
        x0: starting parameters, tried besides the global start (a SABR start without beta
            starts a free beta at :data:`pricing.calibration_sabr.FREE_BETA_START`, 0.5); one
            outside the box the method searches (its default box, or ``bounds`` where given;
            Heston ``surrogate``: the surrogate's domain) is refused
            (:func:`check_start_in_box`).
        beta: SABR beta; ``None`` keeps the default 1.0 unless ``free_beta=True`` is passed.
        seed: seed of the global start.
        **options: method options (``max_iterations``, ``n_starts``, ``free_beta``, ...; each
            method takes those it registered, :func:`register_method`, and refuses any other
            by name, listing its own); ``device`` (a torch device such as ``"cuda"``; None or
            absent: the CPU) runs Heston ``direct`` there (the results come back as the same
            Python and numpy types, equal to the CPU's up to rounding); the other methods run on
            the CPU and refuse any other device.

    Returns:
        A :class:`CalibrationResult`.

    Raises:
        ValueError: unknown model, method, weights or option, or an option of the wrong kind;
            NotImplementedError for a method whose dependency is missing (the message names it).

    Examples:
        >>> from pricing.sabr import lognormal_vol
        >>> strikes = [80.0, 90.0, 100.0, 110.0, 120.0]
        >>> vols = lognormal_vol(forward=100.0, strike=strikes, maturity=1.0, alpha=0.2,
        ...                      beta=1.0, rho=-0.3, nu=0.6)
        >>> table = pd.DataFrame({"strike": strikes, "maturity": 1.0, "forward": 100.0,
        ...                       "discount": 1.0, "implied_vol": vols.numpy()})
        >>> fit = calibrate("sabr", table)
        >>> [round(fit.params[k][0], 6) for k in ("alpha", "rho", "nu")], fit.rmse_iv_bp < 1e-6
        ([0.2, -0.3, 0.6], True)
    """
    key = _method_key(model, method)
    _check_inputs(key, bounds, x0, beta, seed, options)
    options = _device_options(key, options)
    table, usable = _prepare_rows(quotes)
    _check_model_quotes(key[0], table)
    n_dropped = int((~usable).sum())
    problem = CalibrationProblem(
        table, quote_weights(table, _kept_weights(weights, usable)), bounds, x0, beta, seed, options
    )
    _warn_if_underdetermined(key[0], [problem], many=False)
    start = time.perf_counter()
    # out of a caller's torch.inference_mode block too: the SABR fit's autograd Jacobians failed
    # there ("element 0 of tensors does not require grad"); Heston's direct fit enters it itself.
    # A block, not a decorator: its frame moved every warning's stacklevel off the caller's line
    with torch.no_grad(), torch.inference_mode(False):
        fit = _REGISTRY[key](problem)
    return _results(key, [problem], [fit], [n_dropped], time.perf_counter() - start)[0]


def _warn_if_underdetermined(
    model: str, problems: Sequence[CalibrationProblem], *, many: bool
) -> None:
    """Say which Heston surfaces have fewer weighted quotes than free parameters (equal bounds
    fix one): their fit is one of many exact ones, reported as converged (SABR says so per
    expiry in its fitter)."""
    if model != "heston":
        return
    few = []
    for i, problem in enumerate(problems):
        fixed = sum(1 for lo, hi in (problem.bounds or {}).values() if float(lo) == float(hi))
        n_free = len(MODEL_PARAMETERS["heston"]) - fixed
        n_weighted = int(np.count_nonzero(problem.weights))
        if n_weighted < n_free:
            where = f"quote table {i}: " if many else ""
            few.append(f"{where}{n_weighted} weighted quotes for {n_free} free parameters")
    if few:
        warnings.warn(f"Heston parameters not identified ({'; '.join(few[:3])}"
                      f"{'; ...' if len(few) > 3 else ''}): any of many exact fits is "
                      "returned", stacklevel=3)  # fmt: skip


def calibrate_many(
    model: str,
    quotes: Sequence[pd.DataFrame | str | Path],
    *,
    method: str = "direct",
    weights: Weights | Sequence[Weights] = "equal",
    bounds: Mapping[str, tuple[float, float]] | None = None,
    x0: Mapping[str, float] | None = None,
    beta: float | None = None,
    seed: int = 0,
    **options: Any,
) -> list[CalibrationResult]:
    """Calibrate many quote tables in one call (e.g. a history of daily surfaces).

    Methods with a batched fitter (:func:`register_batch_method`: Heston ``direct`` and
    ``network``) fit all tables together; the others fit them one after another. The arguments
    are those of :func:`calibrate`, applied to every table; ``weights`` may also be a sequence
    with one entry per table (a name or one weight per quote of that table), for tables with
    different numbers of quotes. With ``device="cuda"`` Heston ``direct`` fits the batch on the
    GPU. Each result's ``seconds`` is its share of the call's wall time (the total divided by the
    number of tables).

    Returns:
        One :class:`CalibrationResult` per table, in order.

    Examples:
        >>> from pricing.sabr import lognormal_vol
        >>> strikes = [80.0, 90.0, 100.0, 110.0, 120.0]
        >>> def smile(nu):
        ...     vols = lognormal_vol(forward=100.0, strike=strikes, maturity=1.0, alpha=0.2,
        ...                          beta=1.0, rho=-0.3, nu=nu)
        ...     return pd.DataFrame({"strike": strikes, "maturity": 1.0, "forward": 100.0,
        ...                          "discount": 1.0, "implied_vol": vols.numpy()})
        >>> fits = calibrate_many("sabr", [smile(0.4), smile(0.6)])
        >>> [round(fit.params["nu"][0], 6) for fit in fits]
        [0.4, 0.6]
        >>> fits = calibrate_many("sabr", [smile(0.4), smile(0.6).iloc[:4]],
        ...                       weights=["vega", [1.0, 2.0, 2.0, 1.0]])  # one entry per table
        >>> fits[1].residuals["weight"].round(4).tolist()
        [0.6667, 1.3333, 1.3333, 0.6667]
    """
    if isinstance(quotes, pd.DataFrame | str | os.PathLike):  # a Path has no len(): a TypeError
        raise TypeError("quotes: expected a sequence of quote tables or files, got a single one")
    if not len(quotes):
        raise ValueError("quotes: no quote tables given")
    key = _method_key(model, method)
    _check_inputs(key, bounds, x0, beta, seed, options)
    options = _device_options(key, options)
    per_table = _weights_per_table(weights, len(quotes))
    problems, dropped = [], []
    ready = already_prepared(quotes, _NEEDED, DECIMAL_LIMITS["implied_vol"])  # one pass
    for i, table in enumerate(quotes):
        try:
            if ready[i]:
                prepared, usable = table, np.ones(len(table), dtype=bool)
            else:
                prepared, usable = _prepare_rows(table, f"quote table {i}: ")
            _check_model_quotes(key[0], prepared)
            n_dropped = int((~usable).sum())
            table_weights = quote_weights(prepared, _kept_weights(per_table[i], usable))
            problem = CalibrationProblem(prepared, table_weights, bounds, x0, beta, seed,
                                         options)  # fmt: skip
        except ValueError as error:
            raise _in_table(i, error) from error
        problems.append(problem)
        dropped.append(n_dropped)
    _warn_if_underdetermined(key[0], problems, many=True)
    start = time.perf_counter()
    with torch.no_grad(), torch.inference_mode(False):  # as calibrate's
        batch = _BATCH_REGISTRY.get(key)
        fits = batch(problems) if batch else _fit_tables(key, problems)
    share = (time.perf_counter() - start) / len(problems)
    return _results(key, problems, fits, dropped, share, many=True)


def _in_table(i: int, error: ValueError) -> ValueError:
    """``error`` saying which quote table it came from (a :class:`QuoteError` stays one)."""
    return (QuoteError if isinstance(error, QuoteError) else ValueError)(
        f"quote table {i}: {error}"
    )


def _fit_tables(key: tuple[str, str], problems: Sequence[CalibrationProblem]) -> list[FitOutput]:
    """The fits of the quote tables by a fitter of one table at a time; its errors and warnings
    name the table (a smile whose forward varied, in a list of 20 tables, was not said to be the
    7th; SABR's warnings of an unidentified expiry or a beta at 0 or 1 named no table)."""
    fits = []
    for i, problem in enumerate(problems):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # each once here; the caller's filters apply below
            try:
                fits.append(_REGISTRY[key](problem))
            except ValueError as error:
                raise _in_table(i, error) from error
        for found in caught:
            warnings.warn(f"quote table {i}: {found.message}", found.category, stacklevel=3)
    return fits


def _method_key(model: str, method: str) -> tuple[str, str]:
    model = model.lower()
    if model not in ("heston", "sabr"):
        raise ValueError(f"model must be 'heston' or 'sabr', got {model!r}")
    _load_models()
    key = (model, method)
    if key in _UNAVAILABLE:
        raise NotImplementedError(f"method {method!r} for {model}: {_UNAVAILABLE[key]}")
    if key not in _REGISTRY:
        later = methods_needing_import(model)
        more = f"; after an import: {', '.join(later)}" if later else ""
        raise ValueError(
            f"unknown method {method!r} for {model}; available: "
            f"{', '.join(available_methods(model))}{more}"
        )
    return key


def _results(
    key: tuple[str, str],
    problems: Sequence[CalibrationProblem],
    fits: Sequence[FitOutput],
    dropped: Sequence[int],
    seconds: float,
    *,
    many: bool = False,
) -> list[CalibrationResult]:
    """The :class:`CalibrationResult` of each fit, residual tables cut from one table of all
    rows (:func:`pricing._calibration_batch.residual_tables`); warns of weighted quotes without
    a model vol (:func:`_warn_unsolved`, naming their table where ``many``)."""
    tables, errors = residual_tables([p.quotes for p in problems], [f.model_iv for f in fits],
                                     [p.weights for p in problems])  # fmt: skip
    _warn_unsolved(errors, [p.weights for p in problems], many=many)
    return [
        CalibrationResult(
            model=key[0],
            method=key[1],
            params=fit.params,
            residuals=table,
            **_fit_statistics(error, problem.weights),
            n_dropped=n_dropped,
            seconds=seconds,
            converged=bool(fit.converged),
            iterations=fit.iterations,
            at_bounds=fit.at_bounds,
        )
        for problem, fit, n_dropped, table, error in zip(
            problems, fits, dropped, tables, errors, strict=True
        )
    ]


def _fit_statistics(error: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    """``rmse_iv_bp``, ``max_abs_iv_bp``, ``sse`` and ``n_quotes`` of the quotes of positive
    weight, from the vol errors in bp and the weights ``(N,)``: a quote weighted 0 is left out
    of the fit (beside an exact fit of 6 quotes, a 500 bp outlier weighted 0 made the RMSE
    189 bp and the largest error 500 bp, and counted as a 7th quote used). The errors count
    only the quotes with a model vol (NaN: none, e.g. a model price that underflows; one such
    quote made a ``network`` fit's RMSE NaN, JSON null): :func:`_warn_unsolved` says how many
    are left out; NaN where none has one. ``n_quotes`` counts them all."""
    used = error[np.asarray(weights) > 0]  # quote_weights refuses weights that are all 0
    solved = used[~np.isnan(used)]
    if not len(solved):
        return {"rmse_iv_bp": np.nan, "max_abs_iv_bp": np.nan, "sse": np.nan,
                "n_quotes": len(used)}  # fmt: skip
    return {"rmse_iv_bp": float(np.sqrt(np.mean(solved**2))),
            "max_abs_iv_bp": float(np.max(np.abs(solved))),
            "sse": float(np.sum((solved / 100) ** 2)), "n_quotes": len(used)}  # fmt: skip


def _warn_unsolved(
    errors: Sequence[np.ndarray], weights: Sequence[np.ndarray], *, many: bool
) -> None:
    """Warn of the tables whose weighted quotes include some without a model vol (vol errors
    in bp ``errors`` NaN there, and weights, ``(N,)`` per table): the fit statistics leave
    them out (:func:`_fit_statistics`)."""
    found = []
    for i, (error, weight) in enumerate(zip(errors, weights, strict=True)):
        used = error[np.asarray(weight) > 0]
        n_nan = int(np.isnan(used).sum())
        if n_nan:
            where = f"quote table {i}: " if many else ""
            found.append(f"{where}{n_nan} of {len(used)} weighted quotes")
    if found:
        warnings.warn(f"no model implied vol at the fitted parameters for {'; '.join(found[:3])}"
                      f"{'; ...' if len(found) > 3 else ''} (no Black vol reproduces the model's "
                      "price there, e.g. one that underflows): rmse_iv_bp, max_abs_iv_bp and sse "
                      "count the others", stacklevel=4)  # fmt: skip


def model_vols(
    result: CalibrationResult,
    *,
    strike: np.ndarray,
    maturity: float,
    forward: float,
) -> np.ndarray:
    """Implied vols of a calibrated model on a strike grid of one expiry (for smile plots).

    For SABR, ``maturity`` must be one of the calibrated expiries.

    Shape:
        ``strike``: ``(K,)``; output ``(K,)``.

    Examples:
        >>> result = CalibrationResult("heston", "direct", {"v0": 0.04, "kappa": 1.5,
        ...     "theta": 0.04, "sigma": 0.5, "rho": -0.7}, pd.DataFrame(), 0.0, 0.0, 0.0, 0, 0,
        ...     0.0, True, 0)
        >>> vols = model_vols(result, strike=np.array([90.0, 110.0]), maturity=1.0, forward=100.0)
        >>> bool(vols[0] > vols[1])  # negative rho: a downward skew
        True
    """
    strikes = torch.as_tensor(np.asarray(strike, dtype=float))
    if result.model == "heston":
        from pricing.heston import otm_implied_vol

        fields = {k: float(result.params[k]) for k in ("v0", "kappa", "theta", "sigma", "rho")}
        return otm_implied_vol(ratio=strikes / forward, maturity=maturity, **fields).numpy()
    from pricing.sabr import lognormal_vol

    table = pd.DataFrame(result.params)
    row = table.iloc[int(np.argmin(np.abs(table["maturity"].to_numpy() - maturity)))]
    if abs(row["maturity"] - maturity) > 1e-9:
        raise ValueError(f"no calibrated SABR smile at maturity {maturity}")
    fields = {k: float(row[k]) for k in ("alpha", "beta", "rho", "nu", "shift")}
    return lognormal_vol(forward=forward, strike=strikes, maturity=maturity, **fields).numpy()
