"""QuantLib reference engines and adapters: the only module of qfnet that imports QuantLib.

Used by tests and benchmarks as the independent reference, and by ``--engine quantlib`` in the CLI.
Engines and quote handles are built once and reused: rebuilding a QuantLib engine per option costs about
a millisecond, far more than the pricing itself.

Dates: QuantLib works with calendar dates. Adapters here use a fixed evaluation date and the
Actual/365 Fixed day counter, and convert a year fraction ``T`` to the nearest whole day; callers that
need exact agreement should use maturities that are whole days over 365 (``days_to_year_fraction``).

Sections, each opened by a ``# Section: NAME.`` comment: Black-Scholes, Heston, SABR, Monte Carlo,
Calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import QuantLib as ql

__all__ = [
    "EVALUATION_DATE",
    "HestonCalibrationFit",
    "bs_greeks",
    "bs_implied_vol",
    "bs_price",
    "days_to_year_fraction",
    "heston_calibrate",
    "maturity_date",
    "sabr_fd_price",
    "sabr_vol",
]

EVALUATION_DATE = ql.Date(5, ql.July, 2002)
DAY_COUNTER = ql.Actual365Fixed()
CALENDAR = ql.NullCalendar()


def days_to_year_fraction(days: int | np.ndarray) -> np.ndarray:
    """Year fraction (Actual/365 Fixed) of a whole number of days, as QuantLib computes it."""
    return np.asarray(days, dtype=float) / 365.0


def maturity_date(maturity: float) -> ql.Date:
    """The date whole days after ``EVALUATION_DATE`` nearest to ``maturity`` years (Actual/365F)."""
    return EVALUATION_DATE + round(maturity * 365.0)


def _set_evaluation_date() -> None:
    ql.Settings.instance().evaluationDate = EVALUATION_DATE


def _arrays(*values: float | Sequence[float] | np.ndarray) -> list[np.ndarray]:
    return list(np.broadcast_arrays(*[np.asarray(v, dtype=float) for v in values]))


def _option_type(is_call: bool) -> int:
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
    """
    p, f, k, t, d, c = _arrays(price, forward, strike, maturity, discount, is_call)
    out = np.full(p.shape, np.nan)
    for i in np.ndindex(p.shape):
        try:
            std_dev = ql.blackFormulaImpliedStdDev(
                _option_type(bool(c[i])),
                k[i],
                f[i],
                p[i],
                d[i],
                0.0,
                ql.nullDouble(),
                accuracy,
                200,
            )
        except RuntimeError:
            continue
        out[i] = std_dev / np.sqrt(t[i])
    return out


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
    """
    f, k, t, a, b, r, n, s = _arrays(forward, strike, maturity, alpha, beta, rho, nu, shift)
    kind = ql.Normal if normal else ql.ShiftedLognormal
    out = np.empty(f.shape)
    for i in np.ndindex(f.shape):
        args = (k[i], f[i], t[i], a[i], b[i], n[i], r[i])
        if s[i] == 0.0:
            out[i] = ql.sabrVolatility(*map(float, args), kind)
        else:
            out[i] = ql.shiftedSabrVolatility(*map(float, args), float(s[i]), kind)
    return out


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
) -> np.ndarray:
    """SABR European prices by ``ql.FdSabrVanillaEngine`` for strikes sharing one smile.

    One engine is built for the (forward, maturity, parameters) and reused across strikes; each
    strike is still one PDE solve (about 0.1-0.2 s at the default grids on one core). Shifted SABR
    is priced as plain SABR on ``forward + shift`` with strikes ``strike + shift``. The maturity is
    rounded to whole days (Actual/365 Fixed, see :func:`maturity_date`); use ``n / 365`` for
    exact comparisons. Prices are undiscounted PDE values times ``discount``.

    Shape:
        ``strike`` and ``is_call`` broadcast to ``(K,)`` or any shape; the output has that shape.
    """
    _set_evaluation_date()
    curve = ql.YieldTermStructureHandle(ql.FlatForward(EVALUATION_DATE, 0.0, DAY_COUNTER))
    engine = ql.FdSabrVanillaEngine(
        float(forward + shift), alpha, beta, nu, rho, curve, t_grid, f_grid, x_grid
    )
    exercise = ql.EuropeanExercise(maturity_date(maturity))
    k, c = _arrays(strike, is_call)
    out = np.empty(k.shape)
    for i in np.ndindex(k.shape):
        payoff = ql.PlainVanillaPayoff(_option_type(bool(c[i])), float(k[i] + shift))
        option = ql.VanillaOption(payoff, exercise)
        option.setPricingEngine(engine)
        out[i] = discount * option.NPV()
    return out


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
    if len(dates) == 1:
        dates, values = [EVALUATION_DATE, EVALUATION_DATE + 365], values * 2
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
) -> HestonCalibrationFit:
    """Fit Heston to Black vols with HestonModelHelper (ImpliedVolError) and Levenberg-Marquardt.

    One helper per quote: an out-of-the-money option expiring ``period`` days (or weeks) after
    :data:`EVALUATION_DATE` (adjusted on ``calendar``), priced by ``AnalyticHestonEngine``; the
    objective is the sum of squared implied-vol errors. With ``period_unit="weeks"``,
    ``calendar="target"`` and the DAX data this is QuantLib's ``testDAXCalibration`` (SSE 177.23).

    Args:
        spot: spot price.
        strike: strikes, shape ``(N,)``.
        period: whole days (or weeks) to each expiry, shape ``(N,)``.
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

    Returns:
        A :class:`HestonCalibrationFit`.
    """
    _set_evaluation_date()
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
    model.calibrate(helpers, optimiser, ql.EndCriteria(max_iterations, 40, *[tolerance] * 3))
    errors = np.array([h.calibrationError() for h in helpers])
    name = _end_criteria_name(model.endCriteria())
    params = (model.v0(), model.kappa(), model.theta(), model.sigma(), model.rho())
    return HestonCalibrationFit(
        tuple(float(p) for p in params),
        np.asarray(market_vol, dtype=float) + errors,
        name,
        name in _STATIONARY_END_CRITERIA,
    )
