"""QuantLib reference engines and adapters: the only module of qfnet that imports QuantLib.

Used by tests and benchmarks as the independent reference, and by ``--engine quantlib`` in the CLI.
Engines and quote handles are built once and reused: rebuilding a QuantLib engine per option costs about
a millisecond, far more than the pricing itself.

Dates: QuantLib works with calendar dates. Adapters here use a fixed evaluation date and the
Actual/365 Fixed day counter, and convert a year fraction ``T`` to the nearest whole day; callers that
need exact agreement should use maturities that are whole days over 365 (``days_to_year_fraction``).
QuantLib's evaluation date is global (``ql.Settings.instance().evaluationDate``): each adapter sets
:data:`EVALUATION_DATE` while it runs and restores the caller's date when it returns or raises.

Sections, each opened by a ``# Section: NAME.`` comment: Black-Scholes, Heston, SABR, Monte Carlo,
Calibration.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, ParamSpec, TypeVar

import numpy as np
import pandas as pd
import QuantLib as ql

from pricing._validation import (
    PARAMETER_DOMAINS,
    check_finite,
    check_nonnegative,
    check_positive,
    domain_requirement,
    inside_domain,
    is_whole,
)
from pricing.quotes import forward_and_discount, short_call_flags

__all__ = [
    "EVALUATION_DATE",
    "HESTON_ENGINES",
    "QUANTLIB_VERSION",
    "HestonCalibrationFit",
    "MCPrice",
    "bs_asian_mc_price",
    "bs_asian_tw_price",
    "bs_barrier_mc_price",
    "bs_barrier_price",
    "bs_greeks",
    "bs_implied_vol",
    "bs_price",
    "days_to_year_fraction",
    "heston_calibrate",
    "heston_mc_price",
    "heston_price",
    "heston_price_table",
    "maturity_date",
    "sabr_fd_price",
    "sabr_vol",
]

QUANTLIB_VERSION: str = ql.__version__
"""The version of the QuantLib this module runs (for reports: the rest of qfnet does not import it)."""
EVALUATION_DATE = ql.Date(5, ql.July, 2002)
DAY_COUNTER = ql.Actual365Fixed()
CALENDAR = ql.NullCalendar()


def days_to_year_fraction(days: int | np.ndarray) -> np.ndarray:
    """Year fraction (Actual/365 Fixed) of a whole number of days, as QuantLib computes it.

    Examples:
        >>> days_to_year_fraction(np.array([73, 365])).tolist()
        [0.2, 1.0]
    """
    return np.asarray(days, dtype=float) / 365.0


def maturity_date(maturity: float) -> ql.Date:
    """The date whole days after ``EVALUATION_DATE`` nearest to ``maturity`` years (Actual/365F).

    Examples:
        >>> EVALUATION_DATE.ISO(), maturity_date(0.5).ISO(), maturity_date(1.0).ISO()
        ('2002-07-05', '2003-01-03', '2003-07-05')
    """
    return EVALUATION_DATE + round(maturity * 365.0)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _at_evaluation_date(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``function`` with QuantLib's global evaluation date at :data:`EVALUATION_DATE`, and
    give the caller's date back afterwards, also on an error (it was left at 2002-07-05: a
    user's own QuantLib code in the same process priced from that date)."""

    @functools.wraps(function)
    def at_date(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        settings = ql.Settings.instance()
        saved = settings.evaluationDate
        settings.evaluationDate = EVALUATION_DATE
        try:
            return function(*args, **kwargs)
        finally:
            # an unset date reads as today's: leave it unset (following the clock) in that case
            settings.evaluationDate = ql.Date() if saved == ql.Date.todaysDate() else saved

    return at_date


def _check_maturity(maturity: float | np.ndarray, where: str = "index") -> np.ndarray:
    """``maturity`` as floats, refused unless finite and > 0, naming the first bad element by its
    ``where`` (``index``: 0-based; ``row``: 1-based table row). A maturity of 0 divided by zero
    in the time scaling (ZeroDivisionError); a negative one reached QuantLib as a NaN stdDev."""
    t = np.asarray(maturity, dtype=float)
    bad = np.flatnonzero(~(np.isfinite(t) & (t > 0)))
    if bad.size:
        first = np.unravel_index(bad[0], t.shape)  # () for a scalar
        position = int(first[0]) + (where == "row") if t.ndim == 1 else tuple(map(int, first))
        at = "" if t.ndim == 0 else f" at {where} {position}"
        raise ValueError(f"maturity must be a finite number of years > 0, got "
                         f"{t.reshape(-1)[bad[0]]}{at}")  # fmt: skip
    return t


def _check_heston_params(**params: np.ndarray) -> None:
    """Refuse Heston parameters outside :data:`pricing._validation.PARAMETER_DOMAINS` (or not
    finite), naming the field and the first bad index. QuantLib priced them: v0 = -0.01 gave
    4.10, theta = -0.04 gave 88.5 for an at-the-money call of spot 100 (engine "fast")."""
    for name, values in params.items():
        domain = PARAMETER_DOMAINS[name]
        bad = np.flatnonzero(~inside_domain(values, *domain))
        if bad.size:
            first = tuple(int(i) for i in np.unravel_index(bad[0], values.shape))
            at = "" if not first else f" at index {first[0] if len(first) == 1 else first}"
            raise ValueError(f"{name} must be {domain_requirement(*domain)}, got "
                             f"{values.reshape(-1)[bad[0]]}{at}")  # fmt: skip


def _arrays(*values: float | Sequence[float] | np.ndarray) -> list[np.ndarray]:
    return list(np.broadcast_arrays(*[np.asarray(v, dtype=float) for v in values]))


def _option_type(is_call: bool) -> int:
    if not isinstance(is_call, bool | np.bool_):  # "put" is truthy: it would price a call
        raise TypeError(f"is_call must be a bool, got {is_call!r}")
    return ql.Option.Call if is_call else ql.Option.Put


# Section: Black-Scholes.


def bs_price(
    *,
    spot: float | np.ndarray,
    strike: float | np.ndarray,
    maturity: float | np.ndarray,
    volatility: float | np.ndarray,
    rate: float | np.ndarray = 0.0,
    dividend: float | np.ndarray = 0.0,
    is_call: bool | np.ndarray = True,
) -> np.ndarray:
    """Black-Scholes-Merton prices by ``ql.blackFormula`` on the forward (exact year fractions).

    Shape:
        Inputs broadcast to (N,) or any shape; the output has that shape.

    Examples:
        >>> bs_price(spot=100.0, strike=[90.0, 110.0], maturity=1.0, volatility=0.2).round(4)
        array([13.5891,  4.292 ])
    """
    s, k, t, v, r, q, c = _arrays(spot, strike, maturity, volatility, rate, dividend, is_call)
    out = np.empty(s.shape)
    for i in np.ndindex(s.shape):
        forward = s[i] * np.exp((r[i] - q[i]) * t[i])
        std_dev = v[i] * np.sqrt(t[i])
        out[i] = ql.blackFormula(
            _option_type(bool(c[i])), k[i], forward, std_dev, np.exp(-r[i] * t[i])
        )
    return out


def bs_implied_vol(
    *,
    price: float | np.ndarray,
    forward: float | np.ndarray,
    strike: float | np.ndarray,
    maturity: float | np.ndarray,
    discount: float | np.ndarray = 1.0,
    is_call: bool | np.ndarray = True,
    accuracy: float = 1e-12,
) -> np.ndarray:
    """Black implied vols by ``ql.blackFormulaImpliedStdDev`` in a loop; NaN where QuantLib fails.

    ``accuracy`` is QuantLib's solver tolerance on the price (its default is 1e-6).

    Shape:
        Inputs broadcast; the output has the broadcast shape.

    Examples:
        >>> price = bs_price(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2)
        >>> round(float(bs_implied_vol(price=price, forward=100.0, strike=100.0, maturity=1.0)), 10)
        0.2
    """
    arrays = _arrays(price, forward, strike, maturity, discount, is_call)
    shape = arrays[0].shape
    out = np.full(len(arrays[0].reshape(-1)), np.nan)
    # Python floats, not numpy elements: indexing numpy arrays element by element cost more
    # than QuantLib's solve (a 1.6x slower reference)
    columns = (a.reshape(-1).tolist() for a in arrays)
    for i, (p, f, k, t, d, c) in enumerate(zip(*columns, strict=True)):
        try:
            std_dev = ql.blackFormulaImpliedStdDev(
                _option_type(bool(c)), k, f, p, d, 0.0, ql.nullDouble(), accuracy, 200
            )
        except RuntimeError:
            continue
        out[i] = std_dev / math.sqrt(t)
    return out.reshape(shape)


def bs_greeks(
    *,
    spot: float | np.ndarray,
    strike: float | np.ndarray,
    maturity: float | np.ndarray,
    volatility: float | np.ndarray,
    rate: float | np.ndarray = 0.0,
    dividend: float | np.ndarray = 0.0,
    is_call: bool | np.ndarray = True,
) -> dict[str, np.ndarray]:
    """Price and greeks by ``ql.BlackCalculator`` (theta per year, vega and rhos per 1.00).

    Shape:
        Inputs broadcast; each output array has the broadcast shape.

    Examples:
        >>> g = bs_greeks(spot=100.0, strike=100.0, maturity=1.0, volatility=0.2)
        >>> {name: round(float(g[name]), 4) for name in ("price", "delta", "vega", "rho")}
        {'price': 7.9656, 'delta': 0.5398, 'vega': 39.6953, 'rho': 46.0172}
    """
    s, k, t, v, r, q, c = _arrays(spot, strike, maturity, volatility, rate, dividend, is_call)
    names = ("price", "delta", "gamma", "vega", "theta", "rho", "dividend_rho")
    out = {name: np.empty(s.shape) for name in names}
    for i in np.ndindex(s.shape):
        forward = s[i] * np.exp((r[i] - q[i]) * t[i])
        discount = np.exp(-r[i] * t[i])
        payoff = ql.PlainVanillaPayoff(_option_type(bool(c[i])), k[i])
        calc = ql.BlackCalculator(payoff, forward, v[i] * np.sqrt(t[i]), discount)
        out["price"][i] = calc.value()
        out["delta"][i] = calc.delta(s[i])
        out["gamma"][i] = calc.gamma(s[i])
        out["vega"][i] = calc.vega(t[i])
        out["theta"][i] = calc.theta(s[i], t[i])
        out["rho"][i] = calc.rho(t[i])
        out["dividend_rho"][i] = calc.dividendRho(t[i])
    return out


# Section: Heston.
# ql.AnalyticHestonEngine on one HestonModel whose parameters are reset per option with setParams and
# whose spot, rate and dividend are SimpleQuotes: nothing is rebuilt per option but the instrument.
# Exact maturities: QuantLib counts whole days (Actual/365F), so a maturity T is priced through the
# time-scaling invariance of Heston. With n = max(1, round(365 T)) days and a = n / (365 T), the
# substitution t' = a t gives dv' = (kappa/a)(theta/a - v') dt' + (sigma/a) sqrt(v') dW', so
# (v0, kappa, theta, sigma)/a with rate and dividend /a over n/365 years has exactly T's price.

HESTON_ENGINES = ("fast", "reference", "reference_cv", "exp_sinh_cv")
"""``fast``: Gauss-Laguerre, 144 nodes (QuantLib's default); ``reference``: adaptive Gauss-Lobatto with
relative tolerance 1e-12 (Heston's P1/P2 form); ``reference_cv``: the same integration applied to the
Andersen-Piterbarg control-variate integrand (relative accuracy also for tiny prices); ``exp_sinh_cv``:
that integrand by exp-sinh quadrature (relative tolerance 1e-10), about 3 times faster than
``reference``, with which it shares neither integrand nor quadrature (the dataset labels use the
two together: each is off by up to 1e-8 where the other is not, ``reference`` at sigma 0.05, this
one at sigma 0.94, rho -0.98, 2.3 years); no reference alone: it gives 5.7e-6, without an error,
for a 1-day call at K/F 5 on v0 = 1e-6, worth ~0, where ``reference`` does not converge.

Far out of the money on a tiny variance with ``v0 << sigma^2 T`` (the P1/P2 integrands decay like
``1 / u^2`` to ``u ~ 1e6``) ``reference`` stops early without an error: 1e-215 for a price of
3.3e-8 (v0 1e-7, theta 1e-8, sigma 0.1, kappa 10, 4 days, K/F 1.001), which ``reference_cv``,
Monte Carlo and a 40-digit Carr-Madan integral agree on."""


class _HestonPricer:
    """One QuantLib Heston model, engine and set of quotes, reused for every option (build and
    use it inside :func:`_at_evaluation_date`)."""

    def __init__(self, engine: str, integration_order: int) -> None:
        if engine not in HESTON_ENGINES:
            raise ValueError(f"engine must be one of {HESTON_ENGINES}; got {engine!r}")
        self.spot, self.rate, self.dividend = (ql.SimpleQuote(x) for x in (1.0, 0.0, 0.0))
        curves = [
            ql.YieldTermStructureHandle(
                ql.FlatForward(EVALUATION_DATE, ql.QuoteHandle(q), DAY_COUNTER)
            )
            for q in (self.rate, self.dividend)
        ]
        process = ql.HestonProcess(*curves, ql.QuoteHandle(self.spot), 0.04, 1.0, 0.04, 0.5, -0.5)
        self.model = ql.HestonModel(process)
        # Gauss-Lobatto at 1e-12 can fail to converge where the P1/P2 integrals nearly cancel; the
        # control-variate integrand then still converges. Neither converges for some tiny prices
        # (1 day, v0 = 1e-6, K/S = 0.2): an adaptive engine then gives NaN, not QuantLib's error.
        self.engines = [self._engine(engine, integration_order)]
        if engine == "reference":
            self.engines.append(self._engine("reference_cv", 0))
        self.adaptive = engine != "fast"

    def _engine(self, engine: str, integration_order: int) -> ql.PricingEngine:
        if engine == "fast":
            return ql.AnalyticHestonEngine(self.model, integration_order)
        if engine == "reference":
            return ql.AnalyticHestonEngine(self.model, 1e-12, 1_000_000)
        cv = ql.AnalyticHestonEngine.AndersenPiterbarg
        if engine == "exp_sinh_cv":
            return ql.AnalyticHestonEngine(
                self.model, cv, ql.FourierIntegration.expSinh(1e-10), 1e-40
            )
        lobatto = ql.FourierIntegration.gaussLobatto(1e-12, 1e-15, 1_000_000)
        return ql.AnalyticHestonEngine(self.model, cv, lobatto, 1e-40)

    def price(
        self, strike: float, maturity: float, is_call: bool, *market_and_model: float
    ) -> float:
        spot, rate, dividend, v0, kappa, theta, sigma, rho = market_and_model
        days = max(1, round(365.0 * maturity))
        scale = days / (365.0 * maturity)
        self.model.setParams(
            ql.Array([theta / scale, kappa / scale, sigma / scale, rho, v0 / scale])
        )
        self.spot.setValue(spot)
        self.rate.setValue(rate / scale)
        self.dividend.setValue(dividend / scale)
        payoff = ql.PlainVanillaPayoff(_option_type(is_call), strike)
        option = ql.VanillaOption(payoff, ql.EuropeanExercise(EVALUATION_DATE + days))
        for engine in self.engines:
            option.setPricingEngine(engine)
            try:
                return option.NPV()
            except RuntimeError:
                if not self.adaptive:
                    raise
        return math.nan


@_at_evaluation_date
def heston_price(
    *,
    strike: float | np.ndarray,
    maturity: float | np.ndarray,
    v0: float | np.ndarray,
    kappa: float | np.ndarray,
    theta: float | np.ndarray,
    sigma: float | np.ndarray,
    rho: float | np.ndarray,
    spot: float | np.ndarray | None = None,
    rate: float | np.ndarray = 0.0,
    dividend: float | np.ndarray = 0.0,
    forward: float | np.ndarray | None = None,
    discount: float | np.ndarray | None = None,
    is_call: bool | np.ndarray = True,
    engine: str = "fast",
    integration_order: int = 144,
) -> np.ndarray:
    """Heston European prices by ``ql.AnalyticHestonEngine`` (exact year fractions, see above).

    Give ``spot`` (with ``rate``, ``dividend``) or ``forward`` (with ``discount``, default 1).
    ``engine`` is one of :data:`HESTON_ENGINES`; ``integration_order`` applies to ``fast``. Where the
    ``reference`` integration does not converge, ``reference_cv`` prices the option; where neither
    does (or, with ``engine="reference_cv"`` or ``"exp_sinh_cv"``, where it does not), the price is
    NaN, with a warning naming the first such index.
    About 20,000 options/s with ``fast``, a few thousand with the adaptive references.

    Raises:
        ValueError: a maturity that is not finite and > 0 or a Heston parameter outside its
            domain (see :class:`pricing.heston.HestonParams`), naming the field and index; spot
            and forward both or neither given, a discount given with spot.

    Shape:
        Inputs broadcast to any shape; the output has that shape.

    Examples:
        >>> p = heston_price(spot=100.0, strike=100.0, maturity=1.0, rate=0.01, dividend=0.02,
        ...                  v0=0.04, kappa=4.0, theta=0.25, sigma=1.0, rho=-0.5, is_call=False,
        ...                  engine="reference")
        >>> round(float(p), 8)  # Lewis' 50-digit value 17.05527096127...
        17.05527096
    """
    maturity = _check_maturity(maturity)
    if forward is not None:
        if spot is not None:
            raise ValueError("give either spot (with rate, dividend) or forward (with discount)")
        spot, t = np.asarray(forward, dtype=float), maturity
        rate = dividend = -np.log(np.asarray(1.0 if discount is None else discount, float)) / t
    elif spot is None:
        raise ValueError("give spot (with rate, dividend) or forward (with discount)")
    elif discount is not None:  # it would be ignored: the rate discounts a spot's price
        raise ValueError("discount goes with forward; with spot, give rate (and dividend)")
    values = _arrays(strike, maturity, is_call, spot, rate, dividend, v0, kappa, theta, sigma, rho)
    _check_heston_params(**dict(zip(("v0", "kappa", "theta", "sigma", "rho"), values[6:],
                                    strict=True)))  # fmt: skip
    pricer = _HestonPricer(engine, integration_order)
    out = np.empty(values[0].shape)
    failed = []
    for i in np.ndindex(out.shape):
        k, t, c, *rest = (float(v[i]) for v in values)
        out[i] = pricer.price(k, t, bool(c), *rest)
        if math.isnan(out[i]):
            failed.append(i)
    if failed:
        first = failed[0][0] if len(failed[0]) == 1 else failed[0]
        at = "" if out.ndim == 0 else f", the first at index {first}"
        warnings.warn(f"{len(failed)} option(s) failed to converge in QuantLib (engine "
                      f"{engine!r}): NaN{at}", stacklevel=3)  # fmt: skip
    return out


def heston_price_table(table: Mapping[str, Sequence[float]], engine: str = "fast") -> np.ndarray:
    """:func:`heston_price` of a quote table's rows (columns as in ARCHITECTURE.md section 2).

    Reads each row's market by :func:`pricing.quotes.forward_and_discount`: its ``forward``
    and ``discount`` where given, else ``spot * exp((rate - dividend - borrow) T)`` and
    ``exp(-rate T)``, a given ``discount`` setting the rate of the spot's carry. ``option_type``
    is ``call``/``put`` (or ``C``/``P``), calls when absent; any other value is refused, and so is
    a maturity that is not finite and > 0 (naming its row, 1-based).

    Shape:
        Each column (N,); output (N,).

    Examples:
        >>> table = {"strike": [90.0, 110.0], "maturity": [1.0, 1.0], "spot": [100.0, 100.0],
        ...          "v0": [0.04] * 2, "kappa": [1.5] * 2, "theta": [0.04] * 2,
        ...          "sigma": [0.5] * 2, "rho": [-0.7] * 2, "option_type": ["put", "call"]}
        >>> heston_price_table(table).round(4)
        array([3.7132, 2.6047])
    """
    columns = {name: np.asarray(table[name]) for name in table}
    columns["maturity"] = _check_maturity(columns["maturity"], where="row")
    kinds = columns.get("option_type", np.array(["call"] * len(columns["strike"])))
    is_call = short_call_flags(kinds)
    # a borrow column was ignored (the 110 call at 3.81 for 3.00 with a 2% borrow), and a forward
    # with a rate but no discount was discounted at 1 (4.08 for 3.88 at 5%)
    forward, discount = forward_and_discount(pd.DataFrame(columns))
    model = {name: columns[name].astype(float) for name in ("v0", "kappa", "theta", "sigma", "rho")}
    return heston_price(
        strike=columns["strike"].astype(float),
        maturity=columns["maturity"],
        forward=forward,
        discount=discount,
        is_call=is_call,
        engine=engine,
        **model,
    )


# Section: SABR.
# Hagan's formula by ql.sabrVolatility / ql.shiftedSabrVolatility (note QuantLib's argument order:
# strike, forward, expiry, alpha, beta, nu, rho[, shift]) and prices by the finite-difference
# engine ql.FdSabrVanillaEngine, which solves the SABR PDE without Hagan's expansion.


def sabr_vol(
    *,
    forward: float | np.ndarray,
    strike: float | np.ndarray,
    maturity: float | np.ndarray,
    alpha: float | np.ndarray,
    beta: float | np.ndarray,
    rho: float | np.ndarray,
    nu: float | np.ndarray,
    shift: float | np.ndarray = 0.0,
    normal: bool = False,
) -> np.ndarray:
    """Hagan's SABR implied vol by QuantLib, one call per element (exact year fractions).

    Lognormal (shifted Black) vols by default, normal (Bachelier) vols with ``normal=True``.
    QuantLib raises ``RuntimeError`` on inputs outside its domain (e.g. ``strike + shift <= 0``).

    Shape:
        Inputs broadcast to any shape; the output has that shape.

    Examples:
        >>> v = sabr_vol(forward=0.039, strike=[0.03, 0.04], maturity=1.0, alpha=0.3, beta=0.6,
        ...              rho=0.01, nu=0.02)
        >>> [round(float(x), 10) for x in v]
        [1.1672583732, 1.1014560936]
    """
    arrays = _arrays(forward, strike, maturity, alpha, beta, rho, nu, shift)
    kind = ql.Normal if normal else ql.ShiftedLognormal
    out = np.empty(len(arrays[0].reshape(-1)))
    # Python floats, not numpy elements (see bs_implied_vol)
    columns = (x.reshape(-1).tolist() for x in arrays)
    for i, (f, k, t, a, b, r, n, s) in enumerate(zip(*columns, strict=True)):
        if s == 0.0:
            out[i] = ql.sabrVolatility(k, f, t, a, b, n, r, kind)
        else:
            out[i] = ql.shiftedSabrVolatility(k, f, t, a, b, n, r, s, kind)
    return out.reshape(arrays[0].shape)


@_at_evaluation_date
def sabr_fd_price(
    *,
    forward: float,
    strike: float | np.ndarray,
    maturity: float,
    alpha: float,
    beta: float,
    rho: float,
    nu: float,
    shift: float = 0.0,
    discount: float = 1.0,
    is_call: bool | np.ndarray = True,
    t_grid: int = 50,
    f_grid: int = 400,
    x_grid: int = 50,
    eps: float = 1e-4,
) -> np.ndarray:
    """SABR European prices by ``ql.FdSabrVanillaEngine`` for strikes sharing one smile.

    One engine is built for the (forward, maturity, parameters) and reused across strikes; each
    strike is still one PDE solve (about 0.1-0.2 s at the default grids on one core). Shifted SABR
    is priced as plain SABR on ``forward + shift`` with strikes ``strike + shift``. QuantLib needs
    a whole number of days ``D``: the model is rescaled in time onto ``D / 365``, with ``alpha``
    and ``nu`` multiplied by ``sqrt(T / (D / 365))`` (the law of ``F_T`` depends on time only
    through ``alpha^2 T`` and ``nu^2 T``), so any maturity is priced exactly. Prices are the
    undiscounted PDE values times ``discount``. ``eps`` is the tail probability the meshers cut
    (QuantLib's default 1e-4; some parameter sets make its CEV mesher fail, and a smaller one
    such as 1e-5 then works). A strike at or below ``-shift`` lies below every value the shifted
    forward can take: its call is worth ``discount (forward - strike)``, its put 0 (QuantLib's
    engine fails there). The engine needs ``beta < 1`` and ``nu > 0`` (``ValueError`` otherwise).

    Shape:
        ``strike`` and ``is_call`` broadcast to ``(K,)`` or any shape; the output has that shape.

    Examples:
        >>> p = sabr_fd_price(forward=0.03, strike=[0.03], maturity=0.25, alpha=0.2 * 0.03**0.5,
        ...                   beta=0.5, rho=-0.3, nu=0.4)
        >>> round(float(p[0]), 6)  # Hagan's formula in Black's gives 0.0011990 here
        0.001199
    """
    # QuantLib checks alpha and rho by name, but prices a beta < 0 and a negative discount, calls
    # a maturity of 0 "alpha must be positive", a forward + shift <= 0 a Boost gamma_p argument
    # and a nu of 0 "end must be larger than start"; its CEV mesher needs beta < 1
    checks = (
        # an infinite maturity or forward failed unnamed (OverflowError in the day count, Boost)
        ("maturity", maturity, maturity > 0 and math.isfinite(maturity), "finite and > 0"),
        ("beta", beta, 0 <= beta < 1, "in [0, 1) (the PDE engine's CEV mesher needs beta < 1)"),
        ("nu", nu, nu > 0, "> 0 (the PDE engine meshes the volatility)"),
        ("forward + shift", forward + shift, 0 < forward + shift < math.inf, "finite and > 0"),
        ("discount", discount, discount > 0 and math.isfinite(discount), "finite and > 0"),
    )
    for name, value, ok, requirement in checks:
        if not ok:
            raise ValueError(f"{name} must be {requirement}, got {value!r}")
    k, c = _arrays(strike, is_call)
    bad = np.flatnonzero(~np.isfinite(k))
    if bad.size:  # a NaN strike priced NaN silently (the other adapters raise)
        raise ValueError(f"strike must be finite, got {k.reshape(-1)[bad[0]]} at index {bad[0]}")
    days = max(1, round(365.0 * maturity))
    time_scale = np.sqrt(maturity / (days / 365.0))
    curve = ql.YieldTermStructureHandle(ql.FlatForward(EVALUATION_DATE, 0.0, DAY_COUNTER))
    engine = ql.FdSabrVanillaEngine(
        float(forward + shift),
        float(alpha * time_scale),
        float(beta),
        float(nu * time_scale),
        float(rho),
        curve,
        t_grid,
        f_grid,
        x_grid,
        0,  # damping steps
        1.0,  # scaling factor of the variance mesher
        float(eps),  # tail probability cut by the meshers
    )
    exercise = ql.EuropeanExercise(EVALUATION_DATE + days)
    out = np.empty(k.shape)
    for i in np.ndindex(k.shape):
        call = _option_type(bool(c[i]))
        if k[i] + shift <= 0.0:  # below the shifted forward's support (QuantLib: a Boost error)
            out[i] = discount * (forward - k[i]) if call == ql.Option.Call else 0.0
            continue
        option = ql.VanillaOption(ql.PlainVanillaPayoff(call, float(k[i] + shift)), exercise)
        option.setPricingEngine(engine)
        out[i] = discount * option.NPV()
    return out


# Section: Monte Carlo.
# ql.MCEuropeanHestonEngine (Heston process with QuantLib's default QuadraticExponentialMartingale
# discretisation, i.e. Andersen's QE with martingale correction), as the reference for our engine.
# Maturities go through the same time-scaling invariance as the Heston section (whole days).


class MCPrice(NamedTuple):
    """A QuantLib Monte Carlo price with its error estimate, wall time and path count.

    Examples:
        >>> MCPrice(price=7.0, std_error=0.2, seconds=0.01, n_paths=2000).n_paths
        2000
    """

    price: float
    std_error: float
    seconds: float
    n_paths: int


@_at_evaluation_date
def heston_mc_price(
    *,
    spot: float,
    strike: float,
    maturity: float,
    v0: float,
    kappa: float,
    theta: float,
    sigma: float,
    rho: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    n_paths: int,
    n_steps: int,
    antithetic: bool = False,
    seed: int = 42,
) -> MCPrice:
    """Heston European price by ``ql.MCEuropeanHestonEngine`` with pseudo-random numbers.

    Args:
        spot, strike, maturity: contract and market (maturity in years, > 0).
        v0, kappa, theta, sigma, rho: Heston parameters.
        rate, dividend: continuously compounded rate and dividend yield.
        is_call: call (True) or put (False).
        n_paths: simulated paths (with ``antithetic``, ``n_paths / 2`` antithetic pairs).
        n_steps: time steps over the life of the option.
        antithetic: antithetic variates.
        seed: QuantLib's random seed (0 would mean "from the clock").

    Returns:
        ``MCPrice(price, std_error, seconds, n_paths)``; ``seconds`` times ``NPV()`` only.

    Examples:
        >>> model = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}
        >>> mc = heston_mc_price(spot=100.0, strike=100.0, maturity=1.0, n_paths=2000, n_steps=20,
        ...                      **model)
        >>> exact = heston_price(spot=100.0, strike=100.0, maturity=1.0, **model)
        >>> bool(abs(mc.price - exact) < 4 * mc.std_error), mc.n_paths
        (True, 2000)
    """
    if n_paths < 2 or (antithetic and n_paths % 2):
        raise ValueError(f"n_paths must be >= 2 (and even with antithetic), got {n_paths}")
    maturity = float(_check_maturity(maturity))
    days = max(1, round(365.0 * maturity))
    scale = days / (365.0 * maturity)
    curves = [
        ql.YieldTermStructureHandle(ql.FlatForward(EVALUATION_DATE, x / scale, DAY_COUNTER))
        for x in (rate, dividend)
    ]
    process = ql.HestonProcess(
        *curves, ql.QuoteHandle(ql.SimpleQuote(spot)), v0 / scale, kappa / scale, theta / scale,
        sigma / scale, rho,
    )  # fmt: skip
    engine = ql.MCEuropeanHestonEngine(
        process, "pseudorandom", timeSteps=n_steps, antitheticVariate=antithetic,
        requiredSamples=n_paths // 2 if antithetic else n_paths, seed=seed,
    )  # fmt: skip
    payoff = ql.PlainVanillaPayoff(_option_type(is_call), strike)
    option = ql.VanillaOption(payoff, ql.EuropeanExercise(EVALUATION_DATE + days))
    option.setPricingEngine(engine)
    return _timed_npv(option, n_paths)


@_at_evaluation_date
def bs_barrier_mc_price(
    *,
    spot: float,
    strike: float,
    barrier: float,
    barrier_type: str,
    maturity: float,
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    n_paths: int,
    n_steps: int,
    antithetic: bool = False,
    seed: int = 42,
) -> MCPrice:
    """Continuously monitored single barrier by ``ql.MCBarrierEngine`` (pseudo-random, the
    Brownian-bridge crossing probability between grid dates: ``isBiased=False``), no rebate.

    Args:
        spot, strike, barrier: contract and market; ``barrier_type`` one of
            ``down_out, up_out, down_in, up_in``.
        maturity: years, a whole number of days (Actual/365F).
        volatility, rate, dividend: flat Black-Scholes market.
        n_paths, n_steps: simulated paths and time steps.
        antithetic: antithetic variates (``n_paths / 2`` pairs).
        seed: QuantLib's random seed.

    Raises:
        ValueError: ``n_paths`` below 2, or odd with ``antithetic``; a spot already beyond the
            barrier (QuantLib refuses it), or an input out of its domain (named).

    Examples:
        >>> mc = bs_barrier_mc_price(spot=100.0, strike=100.0, barrier=90.0,
        ...                          barrier_type="down_out", maturity=1.0, volatility=0.2,
        ...                          n_paths=2000, n_steps=20)
        >>> bool(0.0 < mc.price < bs_price(spot=100.0, strike=100.0, maturity=1.0,
        ...                                volatility=0.2)), mc.n_paths
        (True, 2000)
    """
    samples = _mc_samples(n_paths, antithetic)
    process = _bs_process(spot, volatility, rate, dividend)
    option = _barrier_option(spot, strike, barrier, barrier_type, maturity, is_call, 0.0)
    option.setPricingEngine(ql.MCBarrierEngine(process, "pseudorandom", timeSteps=n_steps,
                                               antitheticVariate=antithetic,
                                               requiredSamples=samples, isBiased=False,
                                               seed=seed))  # fmt: skip
    return _timed_npv(option, n_paths)


@_at_evaluation_date
def bs_barrier_price(
    *,
    spot: float,
    strike: float,
    barrier: float,
    barrier_type: str,
    maturity: float,
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    rebate: float = 0.0,
) -> float:
    """Continuously monitored single barrier by ``ql.AnalyticBarrierEngine`` (Reiner-Rubinstein;
    the arguments as for :func:`bs_barrier_mc_price`, plus the ``rebate``).

    Examples:
        >>> knock_out = bs_barrier_price(spot=100.0, strike=100.0, barrier=90.0,
        ...                              barrier_type="down_out", maturity=1.0, volatility=0.2)
        >>> bool(0.0 < knock_out < bs_price(spot=100.0, strike=100.0, maturity=1.0,
        ...                                 volatility=0.2))
        True
    """
    process = _bs_process(spot, volatility, rate, dividend)
    option = _barrier_option(spot, strike, barrier, barrier_type, maturity, is_call, rebate)
    option.setPricingEngine(ql.AnalyticBarrierEngine(process))
    return float(option.NPV())


def _barrier_option(
    spot: float,
    strike: float,
    barrier: float,
    barrier_type: str,
    maturity: float,
    is_call: bool,
    rebate: float,
) -> ql.BarrierOption:
    """The barrier option, its terms checked by name: QuantLib priced a barrier of -90 as never
    hit and a rebate of -1 as none, and refused a spot beyond the barrier with a bare "barrier
    touched" (a RuntimeError naming neither)."""
    kinds = {"down_out": ql.Barrier.DownOut, "up_out": ql.Barrier.UpOut,
             "down_in": ql.Barrier.DownIn, "up_in": ql.Barrier.UpIn}  # fmt: skip
    if barrier_type not in kinds:
        raise ValueError(f"barrier_type must be one of {sorted(kinds)}, got {barrier_type!r}")
    check_positive(strike=strike, barrier=barrier)
    check_nonnegative(rebate=rebate)
    if spot < barrier if barrier_type.startswith("down") else spot > barrier:
        raise ValueError(f"spot {spot} is beyond the barrier {barrier} of a {barrier_type} option "
                         "(already hit), which QuantLib's engines refuse; "
                         "pricing.analytic_barrier.barrier_price prices it")  # fmt: skip
    payoff = ql.PlainVanillaPayoff(_option_type(is_call), strike)
    exercise = ql.EuropeanExercise(_whole_days(maturity, "maturity"))
    return ql.BarrierOption(kinds[barrier_type], barrier, rebate, payoff, exercise)


@_at_evaluation_date
def bs_asian_mc_price(
    *,
    spot: float,
    strike: float,
    fixing_times: Sequence[float],
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    n_paths: int,
    control: bool = False,
    antithetic: bool = False,
    seed: int = 42,
) -> MCPrice:
    """Arithmetic-average-price Asian by ``ql.MCDiscreteArithmeticAPEngine`` (pseudo-random),
    expiring at the last fixing; ``control`` uses the geometric Asian as control variate.

    Args:
        spot, strike: contract and market.
        fixing_times: fixing times in years, each a whole number of days (Actual/365F).
        volatility, rate, dividend: flat Black-Scholes market.
        n_paths: simulated paths.
        antithetic: antithetic variates (``n_paths / 2`` pairs).
        seed: QuantLib's random seed.

    Raises:
        ValueError: ``n_paths`` below 2, or odd with ``antithetic``; a fixing time that is not a
            whole number of days.

    Examples:
        >>> mc = bs_asian_mc_price(spot=100.0, strike=100.0, fixing_times=[182 / 365, 1.0],
        ...                        volatility=0.2, n_paths=2000)
        >>> bool(0.0 < mc.price < bs_price(spot=100.0, strike=100.0, maturity=1.0,
        ...                                volatility=0.2))
        True
    """
    samples = _mc_samples(n_paths, antithetic)
    process = _bs_process(spot, volatility, rate, dividend)
    engine = ql.MCDiscreteArithmeticAPEngine(process, "pseudorandom", controlVariate=control,
                                             antitheticVariate=antithetic,
                                             requiredSamples=samples, seed=seed)  # fmt: skip
    option = _arithmetic_asian(fixing_times, strike, is_call)
    option.setPricingEngine(engine)
    return _timed_npv(option, n_paths)


@_at_evaluation_date
def bs_asian_tw_price(
    *,
    spot: float,
    strike: float,
    fixing_times: Sequence[float],
    volatility: float,
    rate: float = 0.0,
    dividend: float = 0.0,
    is_call: bool = True,
    running_sum: float = 0.0,
    past_fixings: int = 0,
) -> float:
    """Arithmetic-average-price Asian by ``ql.TurnbullWakemanAsianEngine`` (a lognormal fit of
    the exact first two moments of the discrete average), expiring at the last fixing.

    Args:
        spot, strike: contract and market.
        fixing_times: the fixings to come, in years, each a whole number of days (Actual/365F).
        volatility, rate, dividend: flat Black-Scholes market.
        is_call: call or put.
        running_sum: sum of the ``past_fixings`` fixings already known.
        past_fixings: how many fixings are known; the average is over these and the ones to come.

    Raises:
        ValueError: a fixing time that is not a whole number of days; no fixing; a
            ``running_sum`` without ``past_fixings`` or the reverse.

    Examples:
        >>> round(bs_asian_tw_price(spot=100.0, strike=100.0, fixing_times=[182 / 365, 1.0],
        ...                         volatility=0.2), 4)
        6.3009
    """
    process = _bs_process(spot, volatility, rate, dividend)
    option = _arithmetic_asian(fixing_times, strike, is_call, running_sum, past_fixings)
    option.setPricingEngine(ql.TurnbullWakemanAsianEngine(process))
    return option.NPV()


def _arithmetic_asian(
    fixing_times: Sequence[float],
    strike: float,
    is_call: bool,
    running_sum: float = 0.0,
    past_fixings: int = 0,
) -> ql.DiscreteAveragingAsianOption:
    """The arithmetic-average-price Asian on ``fixing_times`` (whole days), expiring at the last
    fixing, seasoned with ``past_fixings`` known fixings summing to ``running_sum``."""
    if len(fixing_times) == 0:  # an IndexError at dates[-1]
        raise ValueError("fixing_times must hold at least one fixing; got none")
    if not is_whole(past_fixings) or past_fixings < 0:  # SWIG's "Wrong number or type of arguments"
        raise ValueError(f"past_fixings must be a whole number >= 0, got {past_fixings!r}")
    check_nonnegative(running_sum=running_sum)
    if (running_sum > 0) != (past_fixings > 0):  # a running sum without its count was ignored
        raise ValueError(f"running_sum ({running_sum}) and past_fixings ({past_fixings}) must be "
                         "both 0 (no fixing known) or both > 0")  # fmt: skip
    dates = [_whole_days(t, "fixing_times") for t in fixing_times]
    payoff = ql.PlainVanillaPayoff(_option_type(is_call), strike)
    # as Python numbers: SWIG refused numpy's ("Wrong number or type of arguments")
    return ql.DiscreteAveragingAsianOption(ql.Average.Arithmetic, float(running_sum),
                                           int(past_fixings), dates, payoff,
                                           ql.EuropeanExercise(dates[-1]))  # fmt: skip


def _mc_samples(n_paths: int, antithetic: bool) -> int:
    """QuantLib's ``requiredSamples`` for ``n_paths`` paths: one sample per antithetic pair."""
    if n_paths < 2 or (antithetic and n_paths % 2):
        raise ValueError(f"n_paths must be >= 2 (and even with antithetic), got {n_paths}")
    return n_paths // 2 if antithetic else n_paths


def _bs_process(
    spot: float, volatility: float, rate: float, dividend: float
) -> ql.BlackScholesMertonProcess:
    """The flat Black-Scholes process, its inputs checked by name: QuantLib's barrier engines
    priced a volatility of -0.2 as 0.2 and one of 0 as NaN, and a NaN rate failed as "positive
    compound factor required"."""
    check_positive(spot=spot, volatility=volatility)
    check_finite(rate=rate, dividend=dividend)
    curve = lambda x: ql.YieldTermStructureHandle(ql.FlatForward(EVALUATION_DATE, x, DAY_COUNTER))  # noqa: E731
    vol = ql.BlackVolTermStructureHandle(
        ql.BlackConstantVol(EVALUATION_DATE, CALENDAR, volatility, DAY_COUNTER)
    )
    return ql.BlackScholesMertonProcess(
        ql.QuoteHandle(ql.SimpleQuote(spot)), curve(dividend), curve(rate), vol
    )


def _whole_days(t: float, name: str) -> ql.Date:
    """The date ``t`` years after ``EVALUATION_DATE``; ``t`` must be whole days (Actual/365F)."""
    days = round(365.0 * t)
    if days < 1 or abs(365.0 * t - days) > 1e-6:
        raise ValueError(f"{name}: {t} years is not a positive whole number of days (Actual/365F)")
    return maturity_date(t)


def _timed_npv(option: ql.Instrument, n_paths: int) -> MCPrice:
    """Price, error estimate and the wall time of ``NPV()``."""
    start = time.perf_counter()
    price = option.NPV()
    return MCPrice(price, option.errorEstimate(), time.perf_counter() - start, n_paths)


# Section: Calibration.
# Heston calibration exactly as QuantLib's test-suite does it (testDAXCalibration): one
# HestonModelHelper per quote with ImpliedVolError, AnalyticHestonEngine, Levenberg-Marquardt.

_STATIONARY_END_CRITERIA = (
    "StationaryPoint",
    "StationaryFunctionValue",
    "StationaryFunctionAccuracy",
    "ZeroGradientNorm",
    "FunctionEpsilonTooSmall",
)


class HestonCalibrationFit(NamedTuple):
    """Result of :func:`heston_calibrate`.

    Attributes:
        params: ``(v0, kappa, theta, sigma, rho)``.
        model_vol: each helper's model implied vol (market vol plus its calibration error).
        end_criteria: QuantLib's ``EndCriteria`` type name.
        converged: the end criterion is a stationarity test, not the iteration limit.

    Examples:
        >>> fit = HestonCalibrationFit((0.04, 1.5, 0.04, 0.5, -0.7), np.array([0.2, 0.21]),
        ...                            "StationaryFunctionValue", True)
        >>> fit.params[-1], fit.converged
        (-0.7, True)
    """

    params: tuple[float, float, float, float, float]
    model_vol: np.ndarray
    end_criteria: str
    converged: bool


def _zero_curve(days: np.ndarray, rates: np.ndarray) -> ql.YieldTermStructureHandle:
    """Continuously compounded zero curve, linear in the zero rate, flat outside its pillars."""
    order = np.argsort(days)
    days, rates = np.asarray(days, dtype=int)[order], np.asarray(rates, dtype=float)[order]
    dates = [EVALUATION_DATE] + [EVALUATION_DATE + int(d) for d in days if d > 0]
    values = [float(rates[0])] + [float(r) for d, r in zip(days, rates, strict=True) if d > 0]
    # past its last pillar QuantLib carries the last segment's slope on (a flat instantaneous
    # forward); a far pillar at the last rate keeps the zero rate flat
    dates, values = [*dates, dates[-1] + 100 * 365], [*values, values[-1]]
    curve = ql.ZeroCurve(dates, values, DAY_COUNTER)
    curve.enableExtrapolation()
    return ql.YieldTermStructureHandle(curve)


def _end_criteria_name(value: int) -> str:
    names = (
        "None",
        "MaxIterations",
        "StationaryPoint",
        "StationaryFunctionValue",
        "StationaryFunctionAccuracy",
        "ZeroGradientNorm",
        "FunctionEpsilonTooSmall",
        "Unknown",
    )
    lookup = {getattr(ql.EndCriteria, n): n for n in names if hasattr(ql.EndCriteria, n)}
    return lookup.get(value, str(value))


@_at_evaluation_date
def heston_calibrate(
    *,
    spot: float,
    strike: np.ndarray,
    period: np.ndarray,
    market_vol: np.ndarray,
    curve_days: np.ndarray,
    zero_rate: np.ndarray,
    dividend_yield: np.ndarray | None = None,
    x0: Sequence[float] = (0.1, 1.0, 0.1, 0.5, -0.5),
    period_unit: str = "days",
    calendar: str = "null",
    integration_order: int = 64,
    max_iterations: int = 400,
    tolerance: float = 1e-8,
    weights: np.ndarray | None = None,
) -> HestonCalibrationFit:
    """Fit Heston to Black vols with HestonModelHelper (ImpliedVolError) and Levenberg-Marquardt.

    One helper per quote: an out-of-the-money option expiring ``period`` days (or weeks) after
    :data:`EVALUATION_DATE` (adjusted on ``calendar``), priced by ``AnalyticHestonEngine``; the
    objective is the sum of squared implied-vol errors. With ``period_unit="weeks"``,
    ``calendar="target"`` and the DAX data this is QuantLib's ``testDAXCalibration`` (SSE 177.23).

    Args:
        spot: spot price.
        strike: strikes, shape ``(N,)``.
        period: whole days (or weeks) to each expiry, at least 1, shape ``(N,)``.
        market_vol: Black vols, shape ``(N,)``.
        curve_days: pillar days of the zero curves, shape ``(M,)``.
        zero_rate: continuously compounded zero rates at ``curve_days``, shape ``(M,)``.
        dividend_yield: dividend yields at ``curve_days`` (default 0), shape ``(M,)``.
        x0: starting ``(v0, kappa, theta, sigma, rho)`` (QuantLib's test: 0.1, 1, 0.1, 0.5, -0.5).
        period_unit: ``"days"`` or ``"weeks"``.
        calendar: ``"null"`` (no holidays) or ``"target"``.
        integration_order: Gauss-Laguerre order of ``AnalyticHestonEngine``.
        max_iterations: Levenberg-Marquardt iteration limit.
        tolerance: function, parameter and gradient tolerances.
        weights: weight of each quote's squared vol error (default 1), shape ``(N,)``.

    Returns:
        A :class:`HestonCalibrationFit`.

    Examples:
        Six quotes of a flat 20% surface, no rates (the flat smile is Heston with sigma -> 0):

        >>> fit = heston_calibrate(spot=100.0, strike=np.array([90.0, 100.0, 110.0] * 2),
        ...     period=np.array([91] * 3 + [365] * 3), market_vol=np.full(6, 0.2),
        ...     curve_days=np.array([1, 3650]), zero_rate=np.zeros(2))
        >>> bool(np.abs(fit.model_vol - 0.2).max() < 2e-3), len(fit.params)
        (True, 5)
    """
    if period_unit not in ("days", "weeks") or calendar not in ("null", "target"):
        raise ValueError(
            "period_unit must be 'days' or 'weeks' and calendar 'null' or 'target'; "
            f"got {period_unit!r}, {calendar!r}"
        )
    # QuantLib's SWIG takes Python numbers only: np.int64(100) iterations (which calibrate's
    # option checks accept) was a TypeError naming a QuantLib constructor
    integration_order, max_iterations = int(integration_order), int(max_iterations)
    tolerance = float(tolerance)
    if max_iterations < 3:  # EndCriteria: 1 < stationary iterations < max_iterations
        raise ValueError(f"max_iterations must be at least 3 for QuantLib, got {max_iterations}")
    # a period of 0 expired on the evaluation date: the fit went on with model vols of 0.001
    short = np.flatnonzero(~(np.asarray(period) >= 1))
    if short.size:
        raise ValueError(f"period must be at least 1 {period_unit[:-1]}, got "
                         f"{np.asarray(period)[short[0]]} at index {int(short[0])}")  # fmt: skip
    rates = _zero_curve(curve_days, zero_rate)
    no_dividends = np.zeros(len(curve_days))
    dividends = _zero_curve(curve_days, no_dividends if dividend_yield is None else dividend_yield)
    spot_handle = ql.QuoteHandle(ql.SimpleQuote(float(spot)))
    v0, kappa, theta, sigma, rho = (float(x) for x in x0)
    process = ql.HestonProcess(rates, dividends, spot_handle, v0, kappa, theta, sigma, rho)
    model = ql.HestonModel(process)
    engine = ql.AnalyticHestonEngine(model, integration_order)
    cal = ql.TARGET() if calendar == "target" else ql.NullCalendar()
    unit = ql.Weeks if period_unit == "weeks" else ql.Days
    helpers = []
    for k, n, vol in zip(strike, period, market_vol, strict=True):
        vol_handle = ql.QuoteHandle(ql.SimpleQuote(float(vol)))
        error_type = ql.BlackCalibrationHelper.ImpliedVolError
        helper = ql.HestonModelHelper(
            ql.Period(int(n), unit),
            cal,
            float(spot),
            float(k),
            vol_handle,
            rates,
            dividends,
            error_type,
        )
        helper.setPricingEngine(engine)
        helpers.append(helper)
    optimiser = ql.LevenbergMarquardt(tolerance, tolerance, tolerance)
    end = ql.EndCriteria(max_iterations, min(40, max_iterations - 1), *[tolerance] * 3)
    weight = [] if weights is None else [float(w) for w in weights]
    model.calibrate(helpers, optimiser, end, ql.NoConstraint(), weight)
    errors = np.array([h.calibrationError() for h in helpers])
    name = _end_criteria_name(model.endCriteria())
    params = (model.v0(), model.kappa(), model.theta(), model.sigma(), model.rho())
    return HestonCalibrationFit(
        tuple(float(p) for p in params),
        np.asarray(market_vol, dtype=float) + errors,
        name,
        name in _STATIONARY_END_CRITERIA,
    )
