"""Price every row of a quote table with a chosen model and engine (the work behind ``qfnet price``).

Rows carry their own market data (``forward``/``discount``, or ``spot``/``rate``/``dividend``) and model
parameters (columns, or one set for all rows). Output columns: ``price`` and ``implied_vol`` (Black vol
of that price), plus ``std_error`` for Monte Carlo.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from pricing import black_scholes as bs
from pricing._typing import coarsest_eps
from pricing._validation import (
    PARAMETER_DOMAINS,
    check_nonnegative,
    domain_requirement,
    inside_domain,
)
from pricing.quotes import (
    DECIMAL_LIMITS,
    QuoteError,
    call_flags,
    forward_and_discount,
    require_columns,
    row_error,
    shifts,
)

__all__ = [
    "MC_ROW_DOMAINS",
    "MODEL_PARAMETERS",
    "ROW_DOMAINS",
    "add_implied_vols",
    "black_vols",
    "forward_and_discount",
    "model_parameters",
    "price_table",
]

MODEL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "bs": ("volatility",),
    "heston": ("v0", "kappa", "theta", "sigma", "rho"),
    "sabr": ("alpha", "beta", "rho", "nu"),
}
"""Parameter names per model (SABR also takes an optional ``shift``, default 0)."""

Domains = Mapping[str, tuple[float, float, str]]

ROW_DOMAINS: Domains = {
    **PARAMETER_DOMAINS,
    "volatility": (0.0, math.inf, "[)"),
    "shift": (-math.inf, math.inf, "()"),
}
"""Where the analytic, QuantLib and surrogate engines take each parameter, ``(low, high,
brackets)`` (:data:`pricing._validation.PARAMETER_DOMAINS`; finite values only)."""

MC_ROW_DOMAINS: Domains = {**ROW_DOMAINS, "rho": (-1.0, 1.0, "[]")}
"""Where the Monte Carlo engine takes them: its simulations take a correlation of -1 or 1 too."""


def model_parameters(
    quotes: pd.DataFrame,
    model: str,
    params: Mapping[str, float] | None = None,
    *,
    domains: Domains = ROW_DOMAINS,
) -> dict[str, np.ndarray]:
    """Model parameters per row from the table's columns or from ``params`` (one set for all rows),
    each checked against its interval in ``domains`` (:data:`ROW_DOMAINS`, or
    :data:`MC_ROW_DOMAINS` for Monte Carlo): a bad column value is a :class:`QuoteError` naming
    its row, file line and column, a bad ``params`` value a ``ValueError`` naming ``--params``
    (every row holds it: "row 1" sent the reader to the file), as is a ``volatility`` beyond
    :data:`pricing.quotes.DECIMAL_LIMITS`, a percentage, as a file's column of it is.

    A parameter given both ways is an error, so that a stale column never silently wins.

    Shape:
        outputs: (N,) per parameter name.

    Examples:
        >>> quotes = pd.DataFrame({"strike": [90.0, 110.0], "v0": [0.04, 0.05]})
        >>> params = model_parameters(quotes, "heston",
        ...                           {"kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7})
        >>> params["v0"].tolist(), params["kappa"].tolist()
        ([0.04, 0.05], [1.5, 1.5])
        >>> model_parameters(quotes, "heston", {"v0": 0.04})
        Traceback (most recent call last):
        ...
        ValueError: parameter 'v0' is given both as a column and in --params
        >>> model_parameters(quotes, "heston", {"kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -1.7})
        Traceback (most recent call last):
        ...
        ValueError: --params: rho must be in (-1, 1); got -1.7
    """
    if model not in MODEL_PARAMETERS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODEL_PARAMETERS)}")
    params = dict(params or {})
    if model != "sabr" and "shift" in quotes.columns:
        # priced unshifted beside it, without a word: `iv` of the output then solved shifted
        # vols of those prices (0.2511 became another vol); read as SABR's is, by row (a text
        # value was a bare "could not convert string to float", no row)
        shifted = np.flatnonzero(_parameter_column(quotes, "shift", domains["shift"]) != 0.0)
        if shifted.size:
            raise row_error(quotes, int(shifted[0]), "shift",
                            f"model {model} prices unshifted (lognormal) options; a shift is "
                            "SABR's (shifted lognormal): drop the column or use model sabr")  # fmt: skip
    names = MODEL_PARAMETERS[model] + (("shift",) if model == "sabr" else ())
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ValueError(f"--params: unknown parameter(s) {unknown} for model {model}")
    n = len(quotes)
    out: dict[str, np.ndarray] = {}
    for name in names:
        in_table = name in quotes.columns
        if in_table and name in params:
            raise ValueError(f"parameter {name!r} is given both as a column and in --params")
        if in_table:
            out[name] = _parameter_column(quotes, name, domains[name])
        elif name in params:
            value = float(params[name])
            if not inside_domain(np.array(value), *domains[name]):
                raise ValueError(f"--params: {name} must be {domain_requirement(*domains[name])}; "
                                 f"got {value}")  # fmt: skip
            if abs(value) > DECIMAL_LIMITS.get(name, math.inf):  # as a file's column is refused
                raise ValueError(f"--params: {name} {value:g} looks like a percentage: give "
                                 "decimals (0.2 for 20%)")  # fmt: skip
            out[name] = np.full(n, value)
        elif name == "shift":
            out[name] = np.zeros(n)
        else:
            raise QuoteError(
                f"model {model} needs parameter {name!r}: add a column or pass it in --params"
            )
    return out


def _parameter_column(
    quotes: pd.DataFrame, name: str, domain: tuple[float, float, str]
) -> np.ndarray:
    """The column ``name`` as floats ``(N,)``, each in ``domain``; the first value that is not
    is named by row, file line and column (it was "row 2: rho must be in (-1, 1)", no line)."""
    raw = shifts(quotes) if name == "shift" else quotes[name]  # an empty shift is 0, as read
    values = pd.to_numeric(raw, errors="coerce").to_numpy(float)
    bad = np.flatnonzero(~inside_domain(values, *domain))
    if bad.size:
        i = int(bad[0])
        if pd.isna(raw.iloc[i]):
            raise row_error(quotes, i, name, "missing value")
        if np.isnan(values[i]):
            raise row_error(quotes, i, name, f"not a number: {raw.iloc[i]!r}")
        raise row_error(quotes, i, name, f"must be {domain_requirement(*domain)}, got {values[i]}")
    return values


def _is_call(quotes: pd.DataFrame) -> np.ndarray:
    """Calls per row; a type other than ``call``/``put`` (a raw ``C``, a gap) is an error, not a
    put (:func:`pricing.quotes.read_quotes` turns ``C``/``P`` into ``call``/``put``)."""
    require_columns(quotes, ["option_type"], "pricing")
    try:
        return call_flags(quotes["option_type"])
    except QuoteError as error:  # its row, with the file's line
        raise row_error(quotes, error.row - 1, error.column, error.reason) from None


def _row_error(quotes: pd.DataFrame, error: ValueError) -> ValueError:
    """Turn 'index i' in a pricer's message into the table's 1-based row and its file line."""
    text = str(error)
    marker = " at index "
    if marker in text:
        head, tail = text.split(marker, 1)
        index = tail.split()[0].strip("(),")
        if index.isdigit():
            return row_error(quotes, int(index), None, head)
    return QuoteError(text)


def _analytic(model: str, f, d, k, t, call, p: dict[str, np.ndarray]) -> torch.Tensor:
    tensor = {name: torch.tensor(v, dtype=torch.float64) for name, v in p.items()}
    f, d, k, t = (torch.tensor(a, dtype=torch.float64) for a in (f, d, k, t))
    call = torch.tensor(call)
    if model == "bs":
        return bs.black_price(
            forward=f,
            strike=k,
            maturity=t,
            volatility=tensor["volatility"],
            discount=d,
            is_call=call,
        )
    if model == "heston":
        from pricing import heston

        # spot = F D, rate = -ln D / T, dividend = 0 reproduces the row's forward and discount.
        return heston.price(
            spot=f * d,
            strike=k,
            maturity=t,
            rate=-torch.log(d) / t,
            dividend=0.0,
            is_call=call,
            **tensor,
        )
    from pricing import sabr

    shift = tensor.pop("shift")
    vol = sabr.lognormal_vol(forward=f, strike=k, maturity=t, shift=shift, **tensor)
    return bs.black_price(
        forward=f + shift, strike=k + shift, maturity=t, volatility=vol, discount=d, is_call=call
    )


def _check_parameters(model: str, f, k, t, p: dict[str, np.ndarray]) -> None:
    """The analytic engine's parameter checks (naming field and index) for QuantLib, which
    priced Heston with rho = -1.5 (a negative price) and raised bare RuntimeErrors."""
    from pricing import heston, sabr

    tensor = {name: torch.tensor(v, dtype=torch.float64) for name, v in p.items()}
    if model == "bs":
        check_nonnegative(volatility=tensor["volatility"])
    elif model == "heston":
        heston._validate_params(*(tensor[name] for name in heston.PARAM_NAMES))
    else:  # Hagan's vol turns negative where the expansion breaks down
        f, k, t = (torch.tensor(a, dtype=torch.float64) for a in (f, k, t))
        check_nonnegative(volatility=sabr.lognormal_vol(forward=f, strike=k, maturity=t, **tensor))


def _quantlib(model: str, f, d, k, t, call, p: dict[str, np.ndarray]) -> np.ndarray:
    from pricing import quantlib as qlref

    _check_parameters(model, f, k, t, p)
    rate = -np.log(d) / t
    if model == "bs":
        return qlref.bs_price(
            spot=f * d, strike=k, maturity=t, volatility=p["volatility"], rate=rate, is_call=call
        )
    if model == "heston":  # the reference engine: QuantLib's default 144-node Gauss-Laguerre
        # priced a 1-day near-the-money call 0.235 for 1.37e-6 (sigma 2.5, rho -0.999)
        return qlref.heston_price(spot=f * d, strike=k, maturity=t, rate=rate, dividend=0.0,
                                  is_call=call, engine="reference_cv", **p)  # fmt: skip
    vol = qlref.sabr_vol(forward=f, strike=k, maturity=t, **p)
    return qlref.bs_price(
        spot=(f + p["shift"]) * d,
        strike=k + p["shift"],
        maturity=t,
        volatility=vol,
        rate=rate,
        is_call=call,
    )


def price_table(
    quotes: pd.DataFrame,
    *,
    model: str,
    engine: str = "analytic",
    params: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Return ``quotes`` with ``price`` and ``implied_vol`` columns added (analytic or QuantLib).

    Shape:
        quotes: N rows; output: the same N rows with two more columns.

    Examples:
        >>> table = pd.DataFrame({"option_type": ["call"], "strike": [100.0], "maturity": [1.0],
        ...                       "spot": [100.0], "volatility": [0.2]})
        >>> round(float(price_table(table, model="bs")["price"][0]), 6)
        7.965567
    """
    if engine not in ("analytic", "quantlib"):
        raise ValueError(f"price_table: unknown engine {engine!r}; use analytic or quantlib")
    p = model_parameters(quotes, model, params)
    f, d = forward_and_discount(quotes)
    k, t = quotes["strike"].to_numpy(float), quotes["maturity"].to_numpy(float)
    call = _is_call(quotes)
    try:
        if engine == "analytic":
            prices = _analytic(model, f, d, k, t, call, p)
        else:
            prices = torch.as_tensor(_quantlib(model, f, d, k, t, call, p), dtype=torch.float64)
    except ValueError as error:
        raise _row_error(quotes, error) from error
    out = quotes.copy()
    out["price"] = prices.detach().numpy()
    return add_implied_vols(out, prices.detach(), forward=f, discount=d, strike=k, maturity=t,
                            is_call=call, shift=p.get("shift", 0.0))  # fmt: skip


TIME_VALUE_LOST = "time value below the price's rounding (deep in the money)"
NO_TIME_VALUE = "price at its lower bound (no time value, e.g. a zero price)"


def black_vols(
    prices: torch.Tensor | np.ndarray,
    *,
    forward: np.ndarray,
    discount: np.ndarray,
    strike: np.ndarray,
    maturity: np.ndarray,
    is_call: np.ndarray,
    shift: np.ndarray | float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Black implied vols of per-row prices and a status per row (``ok``, or why the vol is NaN:
    a reason of :data:`pricing.black_scholes.IV_STATUS`, :data:`TIME_VALUE_LOST` or
    :data:`NO_TIME_VALUE`); shifted-lognormal vols (Black on ``forward + shift`` and ``strike +
    shift``) where ``shift`` is not 0.

    The solver reads the vol from the time value ``P - D * intrinsic`` (the out-of-the-money
    side); deep in the money that difference is below the price's own rounding (``64 eps
    |price|``, ``eps`` of the coarsest input: float32 prices round at 1.2e-7) and no vol is
    resolvable: solved anyway it came out 0, or several times too high.

    Shape:
        all inputs (N,); outputs (N,).

    Examples:
        >>> v, status = black_vols(np.array([7.9655674554, 50.0]), forward=np.array([100.0] * 2),
        ...                        discount=np.ones(2), strike=np.array([100.0, 50.0]),
        ...                        maturity=np.array([1.0, 0.05]), is_call=np.array([True] * 2))
        >>> round(float(v[0]), 9), status[1] == TIME_VALUE_LOST
        (0.2, True)
    """
    # a model price that carries autograd (its vol needs none) made .numpy() raise below
    price = (prices.detach().to(torch.float64) if isinstance(prices, torch.Tensor)
             else torch.tensor(np.asarray(prices, dtype=float)))  # fmt: skip
    f, k, d = (torch.tensor(np.asarray(x, dtype=float)) for x in (forward, strike, discount))
    shifted = torch.tensor(np.asarray(shift, dtype=float))
    f, k = f + shifted, k + shifted
    call = torch.tensor(np.asarray(is_call, dtype=bool))
    vol, code = bs.implied_vol_with_status(price=price, forward=f, strike=k,
                                           maturity=torch.tensor(np.asarray(maturity, float)),
                                           discount=d, is_call=call)  # fmt: skip
    in_the_money = call != (k >= f)
    intrinsic = d * torch.where(call, f - k, k - f).clamp_min(0.0)
    # a float32 price rounds 5e8 times coarser than the float64 the vols are solved in (its deep
    # in-the-money puts, whose time value was that rounding, came out "ok" with vols 20x too high)
    eps = coarsest_eps(prices, forward, strike, discount, shift)
    lost = in_the_money & ((price - intrinsic).abs() <= 64 * eps * price.abs())
    status = np.array([bs.IV_STATUS[int(c)] for c in code.tolist()], dtype=object)
    status[lost.numpy()] = TIME_VALUE_LOST
    zero = (vol == 0) & ~lost  # a price at its lower bound: no time value, no vol to read
    status[zero.numpy()] = NO_TIME_VALUE
    return torch.where(lost | zero, torch.nan, vol).numpy(), status


def add_implied_vols(
    out: pd.DataFrame, prices: torch.Tensor | np.ndarray, **rows: np.ndarray | float
) -> pd.DataFrame:
    """Set ``out["implied_vol"]`` from :func:`black_vols` (``rows``: its keyword arguments), and
    an ``iv_status`` column with the reason wherever a vol is NaN (``out``'s own ``iv_status``,
    of an earlier pricing, is replaced or, where every vol is solved, removed).

    Examples:
        >>> out = add_implied_vols(pd.DataFrame({"strike": [100.0, 50.0]}),
        ...                        np.array([7.9655674554, 50.0]), forward=np.array([100.0] * 2),
        ...                        discount=np.ones(2), strike=np.array([100.0, 50.0]),
        ...                        maturity=np.array([1.0, 0.05]), is_call=np.array([True] * 2))
        >>> round(float(out["implied_vol"][0]), 9), out["iv_status"].tolist()[0]
        (0.2, 'ok')
        >>> out["iv_status"][1] == TIME_VALUE_LOST  # deep in the money: no vol resolvable
        True
    """
    vols, status = black_vols(prices, **rows)
    out["implied_vol"] = vols
    if (status != "ok").any():
        out["iv_status"] = status
    elif "iv_status" in out:  # a priced file priced again: its reasons stood beside solved vols
        del out["iv_status"]
    return out
