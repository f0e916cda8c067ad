"""Label engines of :mod:`pricing.datasets`: price each sampled point, then its Black implied vol.

Every engine maps ``(points, seed)`` to the price of each row's out-of-the-money option (and a
standard error for Monte Carlo): ``analytic`` (:func:`pricing.heston.price`), ``quantlib``
(:func:`pricing.quantlib.heston_price` or, for SABR, the PDE engine
:func:`pricing.quantlib.sabr_fd_price`), ``mc`` (:func:`pricing.monte_carlo.heston_european`)
and ``hagan`` (:func:`pricing.sabr.lognormal_vol`, whose vol is the label itself: the Black
price is made from it, never inverted back).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

__all__ = [
    "ENGINES",
    "HESTON_PARAMS",
    "SABR_PARAMS",
    "UNLABELLED_REASONS",
    "check_compile",
    "label",
    "sabr_pde_prices",
    "unlabelled_reason",
]

HESTON_PARAMS = ("v0", "kappa", "theta", "sigma", "rho")
SABR_PARAMS = ("alpha", "beta", "rho", "nu")

LabelFn = Callable[[pd.DataFrame, int, torch.device], tuple[np.ndarray | None, ...]]
"""``(points, seed, device) -> (price, std_error or None)`` of the out-of-the-money option per row
(``device``: where the torch engines compute; QuantLib ignores it), or ``(price, None, vol)`` for
an engine whose implied vol is its result (Hagan's): :func:`label` then takes that vol, not the
Black implied vol of the price, which loses it where the price has almost no time value."""

_CPU = torch.device("cpu")


def _model_kwargs(
    points: pd.DataFrame, names: tuple[str, ...], device: torch.device = _CPU
) -> dict[str, torch.Tensor]:
    return {n: _column(points, n, device) for n in names}


def _column(points: pd.DataFrame, name: str, device: torch.device = _CPU) -> torch.Tensor:
    values = points[name].to_numpy(dtype=np.float64)
    return torch.tensor(values, dtype=torch.float64, device=device)


def _is_call(points: pd.DataFrame, device: torch.device = _CPU) -> torch.Tensor:
    return torch.tensor((points["option_type"] == "call").to_numpy(dtype=bool), device=device)


def _heston_analytic(
    points: pd.DataFrame, seed: int, device: torch.device, compile: bool = False
) -> tuple[np.ndarray, None]:
    from pricing import heston

    price = heston.price(
        compile=compile,
        spot=_column(points, "forward", device),
        strike=_column(points, "strike", device),
        maturity=_column(points, "maturity", device),
        is_call=_is_call(points, device),
        **_model_kwargs(points, HESTON_PARAMS, device),
    )
    return price.detach().cpu().numpy(), None


HESTON_QUANTLIB_ENGINES = ("reference", "exp_sinh_cv")
"""QuantLib's Heston integrations of the labels (see :data:`pricing.quantlib.HESTON_ENGINES`): the
first prices, the second checks it; together about 2,000 options/s on one core, a fifth of the
rate of QuantLib's default Gauss-Laguerre (``fast``), which is off by up to 1.4e-5 in price and
24 bp of implied vol (2.8e-7 priced 4.3e-7, 9 days) on the short smiles of
``HESTON_DOMAIN.expanded(0.1)``. Each adaptive one is off by up to 1e-8 at some rows, where the
other is not."""
HESTON_QUANTLIB_PRICE_ERROR = 1e-10
"""Error (of the forward-normalised price) allowed beyond the gap between the two integrations:
where they agree, they agree with our Fourier pricer to 6e-11 (that pricer's own error, the
price checked by mpmath), on 16,384-point Sobol samples of the Heston domain and of it widened by
0.1 and 0.3 and on random points of its short, low-variance and low vol-of-vol corners."""
HESTON_QUANTLIB_VOL_ERROR = 1e-4
"""Largest implied-vol error (1 bp) that a QuantLib Heston label may carry: rows where the price
error allowed (the two integrations' gap plus :data:`HESTON_QUANTLIB_PRICE_ERROR`) could move the
vol more get NaN: the far wings of short or low-variance smiles, with prices below ~1e-9, where
QuantLib's default integration was 10-333 bp off."""


def _heston_quantlib(
    points: pd.DataFrame, seed: int, device: torch.device
) -> tuple[np.ndarray, None]:
    """QuantLib's AnalyticHestonEngine (:data:`HESTON_QUANTLIB_ENGINES`): the reference labels.

    A price is a label only where its error (at most the gap between the two integrations plus
    :data:`HESTON_QUANTLIB_PRICE_ERROR`) moves the implied vol by at most
    :data:`HESTON_QUANTLIB_VOL_ERROR`; elsewhere (and where QuantLib does not converge) the price
    is NaN. With QuantLib's default integration alone, 6 of 8,192 Sobol rows of the domain widened
    by 0.1 got labels 10-333 bp off (a price of 1.93e-10 priced 4.01e-9: 82 bp).
    """
    from pricing import quantlib

    forward = points["forward"].to_numpy(dtype=np.float64)
    price, check = (
        quantlib.heston_price(
            spot=forward,
            strike=points["strike"].to_numpy(dtype=np.float64),
            maturity=points["maturity"].to_numpy(dtype=np.float64),
            is_call=(points["option_type"] == "call").to_numpy(dtype=bool),
            engine=engine,
            **{n: points[n].to_numpy(dtype=np.float64) for n in HESTON_PARAMS},
        )
        for engine in HESTON_QUANTLIB_ENGINES
    )
    price = np.asarray(price, dtype=np.float64)
    scale = forward * points["discount"].to_numpy(dtype=np.float64)
    error = np.abs(price - check) + HESTON_QUANTLIB_PRICE_ERROR * scale  # NaN: one failed
    low, high = (_implied_vol(points.assign(price=price + s * error), _CPU) for s in (-1.0, 1.0))
    # NaN where the vol moves more, or where price - error has no vol (at or below intrinsic)
    price[~(high - low <= 2.0 * HESTON_QUANTLIB_VOL_ERROR)] = np.nan
    return price, None


MC_PATHS = 20_000
"""Paths per option of the Monte Carlo label engine (conditional QE, antithetic, control)."""
MC_STEPS_PER_YEAR = 100


def _heston_mc(
    points: pd.DataFrame, seed: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """One conditional QE Monte Carlo per row (slow: a check on the analytic labels)."""
    from pricing import monte_carlo

    generator = torch.Generator(device=device).manual_seed(seed)
    price, std_error = np.empty(len(points)), np.empty(len(points))
    for i, row in enumerate(points.itertuples(index=False)):
        result = monte_carlo.heston_european(
            spot=float(row.forward),
            strike=float(row.strike),
            maturity=float(row.maturity),
            is_call=row.option_type == "call",
            n_paths=MC_PATHS,
            n_steps=max(16, math.ceil(MC_STEPS_PER_YEAR * row.maturity)),
            conditional=True,
            antithetic=True,
            control=True,
            generator=generator,
            device=device,
            progress=False,
            **{n: float(getattr(row, n)) for n in HESTON_PARAMS},
        )
        price[i], std_error[i] = float(result.price), float(result.std_error)
    return price, std_error


def _sabr_hagan(
    points: pd.DataFrame, seed: int, device: torch.device
) -> tuple[np.ndarray, None, np.ndarray]:
    """Hagan's vol (the label) and its Black price. The vol was the Black implied vol of that
    price: at a total vol ``vol * sqrt(T)`` of 10 or more (30 years, vol 3) the price is the
    forward or strike to double precision, and 10 of 16,384 default-domain rows got no label,
    one a label 11.8 bp from Hagan's vol."""
    from pricing import black_scholes, sabr

    kw = _model_kwargs(points, SABR_PARAMS, device)
    forward, strike = _column(points, "forward", device), _column(points, "strike", device)
    maturity = _column(points, "maturity", device)
    vol = sabr.lognormal_vol(forward=forward, strike=strike, maturity=maturity, **kw)
    valid = torch.isfinite(vol) & (vol > 0)  # Hagan's expansion turns negative in far wings
    price = black_scholes.black_price(
        forward=forward,
        strike=strike,
        maturity=maturity,
        volatility=torch.where(valid, vol, 0.0),
        is_call=_is_call(points, device),
    )
    price, vol = (torch.where(valid, x, float("nan")).detach().cpu().numpy() for x in (price, vol))
    return price, None, vol


SABR_PDE_GRIDS = ((50, 400, 50), (25, 200, 25))
"""QuantLib PDE grids (time, forward, vol) of the SABR labels: the fine one and the half one."""
SABR_PDE_EPS = (1e-4, 1e-5, 1e-6, 1e-3)
"""Mesher tail cuts tried in turn; a row that fails with all of them is labelled NaN."""
SABR_PDE_MAX_GRID_GAP = 0.01
"""Largest implied-vol gap (100 bp) between the two grids' prices of a row that gets a label; the
converged rows' gaps are below ~30 bp (10 years, nu 0.9)."""


def sabr_pde_prices(
    points: pd.DataFrame, grids: tuple[tuple[int, int, int], ...] = SABR_PDE_GRIDS
) -> np.ndarray:
    """QuantLib's SABR PDE price of each row on each grid (time, forward, vol points).

    Every grid of a row uses the same mesher tail cut: the first of :data:`SABR_PDE_EPS` at
    which QuantLib solves them all (its CEV mesher fails on ~10% of parameter sets at its
    default); rows that fail at every cut get NaN. A row the engine refuses (``beta = 1``, inside
    the SABR domain but not the engine's) raises ``ValueError`` naming its index label (a
    generated shard's points are indexed by their dataset row).

    Shape:
        Output: ``(len(grids), N)``.
    """
    from pricing import quantlib

    def solve(row: object, grid: tuple[int, int, int], eps: float) -> float:
        return quantlib.sabr_fd_price(
            forward=float(row.forward),
            strike=float(row.strike),
            maturity=float(row.maturity),
            is_call=row.option_type == "call",
            t_grid=grid[0],
            f_grid=grid[1],
            x_grid=grid[2],
            eps=eps,
            **{n: float(getattr(row, n)) for n in SABR_PARAMS},
        )[()]

    prices = np.full((len(grids), len(points)), np.nan)
    for i, row in enumerate(points.itertuples(index=False)):
        for eps in SABR_PDE_EPS:
            try:
                prices[:, i] = [solve(row, grid, eps) for grid in grids]
            except RuntimeError:
                continue
            except ValueError as error:  # outside the engine's domain (beta = 1): which row
                raise ValueError(f"row {points.index[i]}: {error}") from error
            break
    return prices


def _sabr_quantlib(
    points: pd.DataFrame, seed: int, device: torch.device
) -> tuple[np.ndarray, None]:
    """QuantLib's SABR PDE (FdSabrVanillaEngine), Richardson-extrapolated: exact-enough, slow.

    The engine is second order in its grid spacing, so two solves (:func:`sabr_pde_prices`), on
    the default grid and on one with half the points in every direction, give
    ``p = p_fine + (p_fine - p_half) / 3``: on the cases checked (10 years, nu up to 0.9) within
    about 0.5 bp of implied vol of a grid twice as fine, where the default grid alone is 1-5 bp
    off; but where beta > 0.8, nu > 0.7, alpha > 0.15 and T > 4 the grids are not converged, and
    labels that pass the gap check are up to ~100 bp from a grid twice as fine (the surrogate's
    README). About 0.1 s per row on one core. Rows where QuantLib fails at every mesher cut of
    :data:`SABR_PDE_EPS`, whose two grids' vols differ by more than
    :data:`SABR_PDE_MAX_GRID_GAP`, or where either grid's price has no implied vol (not
    converged), get NaN.
    """
    fine, half = sabr_pde_prices(points, SABR_PDE_GRIDS)
    price = fine + (fine - half) / 3.0
    # Not converged (seen near beta = 1 with large alpha and nu: the two grids' vols differ by
    # thousands of bp; and in far wings where the half grid's price is negative, which the
    # extrapolation turned into a vol 15 bp off): no label rather than a wrong one.
    vols = [_implied_vol(points.assign(price=p), _CPU) for p in (fine, half)]
    gap = np.abs(vols[0] - vols[1])
    price[~(gap <= SABR_PDE_MAX_GRID_GAP)] = np.nan
    return price, None


ENGINES: dict[str, dict[str, LabelFn]] = {
    "heston": {"analytic": _heston_analytic, "quantlib": _heston_quantlib, "mc": _heston_mc},
    "sabr": {"hagan": _sabr_hagan, "quantlib": _sabr_quantlib},
}
"""Label engines per model: ``analytic`` (our Heston pricer), ``quantlib``, ``mc``, ``hagan``."""


UNLABELLED_REASONS: dict[tuple[str, str], str] = {
    ("heston", "quantlib"): "a price its two integrations do not vouch for to 1 bp of implied vol "
    "(far wings of short or low-variance smiles) or did not converge",
    ("sabr", "quantlib"): "QuantLib's PDE did not converge (at every mesher cut, or its two grids' "
    "vols differ by more than 100 bp)",
    ("sabr", "hagan"): "Hagan's vol is not positive (far wings)",
}
"""Why an engine leaves rows unlabelled (NaN), beyond a price with no time value, per
``(model, engine)``."""


def unlabelled_reason(model: str, engine: str) -> str:
    """Why ``engine`` may label a row NaN: recorded in a dataset's metadata and its warning."""
    reason = UNLABELLED_REASONS.get((model, engine))
    return "no price with time value" + (f", or {reason}" if reason else "")


def label(
    points: pd.DataFrame,
    *,
    model: str,
    engine: str,
    seed: int = 0,
    device: torch.device | str | None = None,
    compile: bool = False,
) -> pd.DataFrame:
    """Add ``price``, ``implied_vol`` (and ``std_error`` for Monte Carlo) columns to sampled points.

    Args:
        points: output of :func:`sample`.
        model: ``"heston"`` or ``"sabr"``.
        engine: a key of ``ENGINES[model]``.
        seed: seeds the Monte Carlo engine (ignored by the deterministic ones).
        device: where the torch engines and the implied-vol solver run (default CPU); labels
            are float64 either way.
        compile: fuse the analytic Heston pricer with ``torch.compile`` (Heston ``analytic``
            only; see :func:`pricing.heston.price`): several times the throughput once compiled,
            after a one-off compilation of seconds to tens of seconds per process.

    Returns:
        A copy of ``points`` with the labels; rows whose price has no implied vol, or only a
        zero one (no time value), get NaN, and so do those where the engine cannot vouch for
        its label (see :data:`UNLABELLED_REASONS`).

    Raises:
        ValueError: a ``discount`` other than 1 (naming the row): every engine prices at the
            forward without discounting, as :func:`sample`'s points are.

    Examples:
        >>> from pricing.datasets import HESTON_DOMAIN, sample
        >>> labelled = label(sample(HESTON_DOMAIN, 4, seed=0), model="heston", engine="analytic")
        >>> list(labelled.columns[-2:]), bool(labelled["implied_vol"].between(0.05, 1.0).all())
        (['price', 'implied_vol'], True)
    """
    engines = ENGINES.get(model)
    if engines is None:
        raise ValueError(f"model must be one of {sorted(ENGINES)}, got {model!r}")
    if engine not in engines:
        raise ValueError(f"engine for {model} must be one of {sorted(engines)}, got {engine!r}")
    if compile:
        check_compile(model, engine)
    _check_undiscounted(points)
    where = torch.device(device) if device is not None else _CPU
    options = {"compile": True} if compile else {}
    price, std_error, *engine_vol = engines[engine](points, seed, where, **options)
    out = points.copy()
    out["price"] = price
    if std_error is not None:
        out["std_error"] = std_error
    vol = np.array(engine_vol[0], dtype=np.float64) if engine_vol else _implied_vol(out, where)
    # A vol of 0 is a price with no time value left (0, or the intrinsic value): an engine's
    # floor or underflow (QuantLib's PDE prices a few far wings at exactly 0), not a label.
    vol[~(vol > 0)] = np.nan
    out["implied_vol"] = vol
    return out


def _check_undiscounted(points: pd.DataFrame) -> None:
    """Refuse a ``discount`` other than 1, naming the first such row: the engines price each row
    undiscounted at its forward (zero rates, as :func:`pricing.datasets.sample`'s points are),
    while the implied vol reads the price as discounted: a discount of 0.9 left the prices as
    they were and raised the vols by 0.1 to 3.7 points (0.353 to 0.389)."""
    if "discount" not in points:  # Hagan's labels never read it
        return
    discount = points["discount"].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(discount == 1.0))
    if bad.size:
        raise ValueError(
            f"row {points.index[bad[0]]}: discount must be 1, got {discount[bad[0]]}: the label "
            "engines price at the forward undiscounted, and the Black implied vol does not "
            "depend on the discount (label with discount 1, then multiply the prices by it)"
        )


def check_compile(model: str, engine: str) -> None:
    """Only the analytic Heston engine has a ``torch.compile``-fused pricer."""
    if (model, engine) != ("heston", "analytic"):
        raise ValueError(f"compile=True needs the heston analytic engine, got {model} {engine}")


def _implied_vol(points: pd.DataFrame, device: torch.device) -> np.ndarray:
    from pricing import black_scholes

    vol = black_scholes.black_implied_vol(
        price=_column(points, "price", device),
        forward=_column(points, "forward", device),
        strike=_column(points, "strike", device),
        maturity=_column(points, "maturity", device),
        discount=_column(points, "discount", device),
        is_call=_is_call(points, device),
    )
    return vol.detach().cpu().numpy()
