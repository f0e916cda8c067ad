"""Registers ``calibrate("heston", quotes, method="network")``: the calibration network's answer.

The quotes are interpolated onto the network's grid (:func:`qfnet.calibration_network.
grid_surfaces`, all tables at once; quotes of weight 0 are left out, the others count alike
whatever their weights), the network returns the parameters in one forward pass (clipped to
the caller's bounds, with a warning where that moves them), and the model vols at the quotes
are computed with the exact pricer so that :func:`pricing.calibration.calibrate` reports
residuals as for the other methods. No optimisation: ``iterations`` is 0, and ``converged`` says
that the answer drew none of the method's warnings (the quotes cover the network's grid, the
answer lies off the edges of its training box and within the caller's bounds): false where a
warning names the table, whose answer is a rough start. Option ``network=PATH`` selects another
network file.
``pricing`` cannot import ``qfnet``, so importing this module is what registers the method.

Importing it also registers the shipped network as the global start of ``direct`` and
``surrogate`` (:func:`network_start`, via :func:`pricing.calibration.register_start`): its answer
is tried first, beside a smaller Sobol scan; ``global_start="scan"`` turns it off per call.

Examples:
    >>> from pricing.calibration import available_methods
    >>> "network" in available_methods("heston")
    True
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pricing.calibration import (
    CalibrationProblem,
    FitOutput,
    register_batch_method,
    register_method,
    register_start,
)
from pricing.heston import otm_implied_vol
from qfnet._paths import file_version
from qfnet.calibration_network import (
    GRID_LOG_MONEYNESS,
    GRID_MATURITY,
    MATURITIES,
    NAMES,
    CalibrationNetwork,
    _grid_neighbours,
    default_path,
    grid_surfaces,
    load_network,
    predict,
)
from qfnet.training.checkpoint import ModelFileError

__all__ = [
    "fit_many_with_network",
    "fit_with_network",
    "network_start",
    "network_starts",
    "register",
]


def _network(path: str | Path | None) -> CalibrationNetwork:
    """:func:`qfnet.calibration_network.load_network`, cached per file version
    (:func:`qfnet._paths.file_version`: a retrained file is reloaded)."""
    resolved = Path(path) if path is not None else default_path()
    return _cached_network(resolved, file_version(resolved))


@functools.lru_cache(maxsize=4)
def _cached_network(path: Path, stamp: tuple[int, int, int] | None) -> CalibrationNetwork:
    return load_network(path)


def _clip(params: dict[str, float], bounds: Mapping[str, tuple[float, float]] | None) -> list[str]:
    """Clip ``params`` into ``bounds`` in place; the values it moved, as ``"rho -0.698 to
    -0.5"``."""
    moved = []
    for name, (low, high) in (bounds or {}).items():
        if name not in params:
            raise ValueError(f"unknown Heston parameter in bounds: {name!r}")
        value = min(max(params[name], low), high)
        if value != params[name]:
            moved.append(f"{name} {params[name]:.4g} to {value:.4g}")
        params[name] = value
    return moved


def _model_vols(quotes: pd.DataFrame, params: dict[str, float | np.ndarray]) -> np.ndarray:
    """Exact-pricer vols at the quotes; params scalars or one value per quote ``(N,)``."""
    ratio = torch.tensor((quotes["strike"] / quotes["forward"]).to_numpy(dtype=float))
    t = torch.tensor(quotes["maturity"].to_numpy(dtype=float))
    fields = {name: torch.as_tensor(np.asarray(v, dtype=float)) for name, v in params.items()}
    return otm_implied_vol(ratio=ratio, maturity=t, **fields).numpy()


_REACH = float((GRID_LOG_MONEYNESS / GRID_MATURITY.sqrt()).max())
"""The grid's widest ``ln(K/F) / sqrt(T)`` on either side (0.5)."""
_MATURITY_SLACK = (1.25, 1.1)
"""How far the quotes' first and last expiries may lie inside the grid's first and last
maturities (factors): the grid's rows beyond the quotes are flat vols.

On 100 exact surfaces of the network's box the answer's median RMSE on the whole grid was
3.3 bp with expiries at the grid's six maturities; with the first at 30 days * 1.25, or the last
at 3 years / 1.1, about 10 bp. The factor 1.5 allowed before let a last expiry of 2 years pass
without a word: 43 bp (and a first at 45 days, 18 bp)."""
_GAPS = (4.0, 2.0, 2.0, 3.0, 3.0, 3.0)
"""The largest ratio of the expiries each of the grid's rows (:data:`MATURITIES`) is interpolated
between (in total variance): an early first expiry is fine with a quote near 30 days, a
quarterly chain's 0.2 and 0.45 years not around the 3-month row.

On 50 exact surfaces of the network's box (median RMSE on the whole grid, 3.8 bp with the grid's
six maturities, the same with 7 days added): a first expiry at 7, 14, 20 or 25 days and the next
at 3 months, 42, 30, 20 and 12 bp (ratios 13, 6.5, 4.6 and 3.7); 14 then 60 days, 18 bp (4.3);
21 then 45 days, 7.9 bp (2.1). A first expiry at 37.5 days (passes) gave 10 bp, at 45 (warns) 17.
On 150 surfaces (3.5 bp with the grid's maturities), one later row between two expiries instead
of quoted: the 3- and 6-month rows at ratio 1.56, 2, 2.25, 3 and 4: 5.8 and 7.1, 7.3 to 11.8, 11.8
and 15.1, 17 to 24, 28 and 35 bp; the 1- and 2-year rows at ratio 2.25, 3 and 4: 7.6 and 6.8, 9.7
to 10.8, 14.5 (1 year). The expiries 30 days, 0.2, 0.45, 0.7, 0.95, 1.45, 1.95 and 2.95 years
(the 3-month row at 2.25, the others at 1.5 or less): 14.3 bp; with 0.25 added, 6.7. Gaps add
up: 0.16, 0.4, 0.9, 1.9 years (ratios 2.5, 2.25, 2.1, 1.6), 25 bp. An early first expiry does not
worsen the answer against the same quotes without it (first at 45 days, 17 bp; with 7, 14 or 20
days before it, 15, 11 and 7.9), and with a quote at 30 days changes nothing."""


def _warn_if_extrapolated(tables: Sequence[pd.DataFrame]) -> set[int]:
    """The ``network`` answer rests on the whole grid: say (once) which quote tables' expiries
    or strikes leave part of it to flat extrapolation (one 1-year expiry gave kappa 0.5 for a
    true 1.5; strikes within 5% of the forward gave kappa 5.0 and sigma 0.14 for 1.5 and 0.5).
    Strikes are checked per expiry that the grid reads: K/F 0.8 to 1.2 at every expiry from 30
    days to 3 years reached the grid's wings at 30 days, passed, and gave kappa 4.7 and theta
    0.031 for a true 0.8 and 0.06 (220 bp RMSE) without a word, the long expiries' wings flat.
    Expiries far apart around a grid maturity (:data:`_GAPS`: 7 days, then 3 months, 42 bp;
    0.1 and 1 year, 106 bp) are said too.
    Not for the network as a global start: the fit that follows reads the quotes themselves.

    Returns:
        The positions of the tables it names.
    """
    short, named = [], set()
    for i, quotes in enumerate(tables):
        found = len(short)
        which = "the quotes'" if len(tables) == 1 else f"table {i}:"
        covered = quotes["maturity"].min(), quotes["maturity"].max()
        first, last = _MATURITY_SLACK
        if covered[0] > MATURITIES[0] * first or covered[1] < MATURITIES[-1] / last:
            short.append(f"{which} expiries cover {covered[0]:.3g} to {covered[1]:.3g} years")
        short += [f"{which} expiries jump from {t1:.3g} to {t2:.3g} years across the grid's "
                  f"{t:.3g}-year maturity" for t1, t2, t in _expiry_gaps(quotes)]  # fmt: skip
        narrow = _narrow_expiries(quotes)
        if narrow:
            (t, low, high), more = narrow[0], len(narrow) - 1
            short.append(f"{which} strikes cover ln(K/F)/sqrt(T) {low:.3g} to {high:.3g} at "
                         f"T={t:.3g}{f' and {more} later expiries' if more else ''}")  # fmt: skip
        if len(short) > found:
            named.add(i)
    if short:  # stacklevel 4, here and below: the caller of calibrate(_many) (3 was its line)
        warnings.warn(f"{_listed(short)}; the calibration network reads "
                      f"{MATURITIES[0]:.3g} to {MATURITIES[-1]:g} years and ln(K/F)/sqrt(T) "
                      f"{-_REACH:g} to {_REACH:g}, filled from the quotes by flat "
                      "extrapolation beyond them and interpolation between expiries: its answer "
                      "is a rough start", stacklevel=4)  # fmt: skip
    return named


def _expiry_gaps(quotes: pd.DataFrame) -> list[tuple[float, float, float]]:
    """The grid maturities interpolated between expiries further apart than :data:`_GAPS` allows:
    ``(expiry before, expiry after, grid maturity)`` each, by maturity."""
    expiries = quotes["maturity"].to_numpy(dtype=float)
    gaps = []
    for t, limit in zip(MATURITIES, _GAPS, strict=True):
        before, after = expiries[expiries <= t], expiries[expiries >= t]
        if before.size and after.size and after.min() > before.max() * limit:
            gaps.append((float(before.max()), float(after.min()), t))
    return gaps


def _narrow_expiries(quotes: pd.DataFrame) -> list[tuple[float, float, float]]:
    """The expiries the grid reads (those on either side of each grid maturity, by the helper
    :func:`qfnet.calibration_network.grid_surfaces` picks them with) whose strikes reach less than
    2/3 of the grid's ``ln(K/F)/sqrt(T)`` on a side: ``(T, lowest, highest)`` each, by expiry."""
    t = quotes["maturity"].to_numpy(dtype=float)
    strike, forward = (quotes[c].to_numpy(dtype=float) for c in ("strike", "forward"))
    x = np.log(strike / forward) / np.sqrt(t)
    expiries, expiry = np.unique(t.round(10), return_inverse=True)
    low, high = np.full(len(expiries), np.inf), np.full(len(expiries), -np.inf)
    np.minimum.at(low, expiry, x)
    np.maximum.at(high, expiry, x)
    read = np.unique(_grid_neighbours(expiries[None], np.array([len(expiries)])))
    narrow = read[(low[read] > -_REACH / 1.5) | (high[read] < _REACH / 1.5)]
    return [(float(expiries[e]), float(low[e]), float(high[e])) for e in narrow]


_EDGE = 0.01
"""An answer within this fraction of the box's width from its edge saturated the network's output
(a sigmoid): the surface lies beyond what the network was trained on."""


def _warn_at_edge(net: CalibrationNetwork, fields: Sequence[dict[str, float] | None]) -> set[int]:
    """Say (once) which answers sit on the edge of the network's box (the DAX surface gave kappa
    5.0 and sigma 1.0, both edges, reported as converged with nothing said); their positions."""
    lower, upper = net.lower.tolist(), net.upper.tolist()
    found, named = [], set()
    for i, values in enumerate(fields):
        edges = [f"{name} {values[name]:.4g} in [{lo:g}, {hi:g}]"
                 for name, lo, hi in zip(NAMES, lower, upper, strict=True)
                 if values is not None and min(values[name] - lo, hi - values[name])
                 <= _EDGE * (hi - lo)]  # fmt: skip
        if edges:
            found.append(("" if len(fields) == 1 else f"table {i}: ") + ", ".join(edges))
            named.add(i)
    if found:
        warnings.warn(f"the calibration network's answer is at the edge of its training box: "
                      f"{_listed(found)}; the surface lies beyond what it was trained on (method "
                      "'direct' fits it)", stacklevel=4)  # fmt: skip
    return named


def _clip_and_warn(
    problems: Sequence[CalibrationProblem], fields: Sequence[dict[str, float] | None]
) -> set[int]:
    """Clip each answer into its problem's bounds, saying (once) which values moved: a start is
    clipped without a word, an answer was too (rho -0.7 returned as -0.5 for bounds (-0.5, 0),
    172 bp for 5 bp, "converged"), and the edge warning read a clipped kappa 6 as the surface's.
    Returns the positions of the answers it moved."""
    found, named = [], set()
    for i, (problem, values) in enumerate(zip(problems, fields, strict=True)):
        moved = _clip(values, problem.bounds) if values is not None else []
        if moved:
            found.append(("" if len(fields) == 1 else f"table {i}: ") + ", ".join(moved))
            named.add(i)
    if found:
        warnings.warn(f"the calibration network's answer lies outside the bounds and was clipped "
                      f"to them: {_listed(found)} (method 'direct' fits within the bounds)",
                      stacklevel=4)  # fmt: skip
    return named


def _listed(items: Sequence[str]) -> str:
    """The first three of a warning's findings, and how many more."""
    more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
    return "; ".join(items[:3]) + more


def _read_quotes(problem: CalibrationProblem) -> pd.DataFrame:
    """The quotes the network reads: those of positive weight (a quote weighted 0, an outlier
    the caller left out of the fit, moved the network's answer: a 200% vol weighted 0 took v0
    from 0.044 to 0.19). The network weighs the others alike, whatever their weights."""
    kept = np.asarray(problem.weights) > 0
    return problem.quotes if kept.all() else problem.quotes.loc[kept]


def _refuse_starts(problems: Sequence[CalibrationProblem]) -> None:
    """The network does not optimise: a caller's ``x0`` would be ignored without a word."""
    if any(problem.x0 for problem in problems):
        raise ValueError("x0: method 'network' takes no start (it does not optimise); methods "
                         "'direct', 'surrogate' and 'quantlib' start from x0")  # fmt: skip


def fit_with_network(problem: CalibrationProblem) -> FitOutput:
    """The ``network`` method: parameters from the calibration network, exact model vols.

    Raises:
        NotImplementedError: no network file (the message names the path).
        ValueError: the quotes cannot be put on the network's grid, or the problem has ``x0``.

    Examples:
        >>> quotes = pd.DataFrame({"strike": [80.0, 100.0, 125.0] * 2, "forward": 100.0,
        ...     "maturity": [0.1] * 3 + [3.0] * 3, "market_iv": [0.24, 0.2, 0.18] * 2})
        >>> fit = fit_with_network(CalibrationProblem(quotes, np.ones(6)))
        >>> sorted(fit.params), fit.model_iv.shape, fit.iterations
        (['kappa', 'rho', 'sigma', 'theta', 'v0'], (6,), 0)
    """
    _refuse_starts([problem])
    options = dict(problem.options)
    try:
        net = _network(options.pop("network", None))
    except FileNotFoundError as error:
        raise NotImplementedError(f"method 'network' needs a trained network: {error}") from error
    read = _read_quotes(problem)
    surfaces, errors = grid_surfaces([read])
    if errors[0] is not None:
        raise ValueError(errors[0])
    warned = _warn_if_extrapolated([read])
    (values,) = _predicted(net, surfaces, errors)
    warned |= _warn_at_edge(net, [values]) | _clip_and_warn([problem], [values])
    vols = _model_vols(problem.quotes, values)
    return FitOutput(values, vols, converged=not warned, iterations=0)


def fit_many_with_network(problems: list[CalibrationProblem]) -> list[FitOutput]:
    """The ``network`` method on many quote tables: one forward pass for all the surfaces and
    one exact-pricer call for all the quotes (the options of the first problem apply to all).

    Examples:
        >>> quotes = pd.DataFrame({"strike": [80.0, 100.0, 125.0] * 2, "forward": 100.0,
        ...     "maturity": [0.1] * 3 + [3.0] * 3, "market_iv": [0.24, 0.2, 0.18] * 2})
        >>> problem = CalibrationProblem(quotes, np.ones(6))
        >>> fits = fit_many_with_network([problem, problem])
        >>> single = fit_with_network(problem).params
        >>> len(fits), all(abs(fits[1].params[k] - single[k]) < 1e-12 for k in single)
        (2, True)
    """
    _refuse_starts(problems)
    options = dict(problems[0].options)
    try:
        net = _network(options.pop("network", None))
    except FileNotFoundError as error:
        raise NotImplementedError(f"method 'network' needs a trained network: {error}") from error
    read = [_read_quotes(p) for p in problems]
    surfaces, errors = grid_surfaces(read)
    for i, error in enumerate(errors):
        if error is not None:
            raise ValueError(f"quote table {i}: {error}")
    warned = _warn_if_extrapolated(read)
    fields = _predicted(net, surfaces, errors)
    warned |= _warn_at_edge(net, fields) | _clip_and_warn(problems, fields)
    sizes = [len(p.quotes) for p in problems]
    repeated = {n: np.repeat([f[n] for f in fields], sizes) for n in NAMES}
    vols = _model_vols(pd.concat([p.quotes for p in problems], ignore_index=True), repeated)
    chunks = np.split(vols, np.cumsum(sizes)[:-1])
    return [
        FitOutput(f, v, converged=i not in warned, iterations=0)
        for i, (f, v) in enumerate(zip(fields, chunks, strict=True))
    ]


def network_start(problem: CalibrationProblem) -> dict[str, float] | None:
    """The shipped network's parameters for the problem's quotes, clipped to its bounds; None
    when there is no network file or the quotes cannot be put on its grid.

    Raises:
        qfnet.training.checkpoint.ModelFileError: the network file is damaged (the message
            names it, and ``global_start="scan"``, which fits without it).

    Examples:
        >>> quotes = pd.DataFrame({"strike": [80.0, 100.0, 125.0] * 2, "forward": 100.0,
        ...     "maturity": [0.1] * 3 + [3.0] * 3, "market_iv": [0.24, 0.2, 0.18] * 2})
        >>> start = network_start(CalibrationProblem(quotes, np.ones(6), bounds={"rho": (-0.5, 0.0)}))
        >>> sorted(start), -0.5 <= start["rho"] <= 0.0
        (['kappa', 'rho', 'sigma', 'theta', 'v0'], True)
    """
    return network_starts([problem])[0]


def network_starts(problems: Sequence[CalibrationProblem]) -> list[dict[str, float] | None]:
    """:func:`network_start` of each problem, with one forward pass for all of them.

    Examples:
        >>> quotes = pd.DataFrame({"strike": [80.0, 100.0, 125.0] * 2, "forward": 100.0,
        ...     "maturity": [0.1] * 3 + [3.0] * 3, "market_iv": [0.24, 0.2, 0.18] * 2})
        >>> bad = quotes.assign(market_iv=-1.0)  # cannot be put on the grid
        >>> starts = network_starts([CalibrationProblem(q, np.ones(6)) for q in (quotes, bad)])
        >>> alone = network_start(CalibrationProblem(quotes, np.ones(6)))
        >>> all(abs(starts[0][k] - alone[k]) < 1e-12 for k in alone), starts[1]
        (True, None)
    """
    try:
        net = _network(None)
    except FileNotFoundError:
        return [None] * len(problems)
    except ModelFileError as error:  # a damaged file: say whose start it is and how to do without
        # the loader's message first: it leads with the file's path (qfnet calibrate prints it)
        raise ModelFileError(error.path, f"{error}; the calibration network is the global start "
                             "of Heston 'direct' and 'surrogate' fits: restore the file, or pass "
                             "global_start='scan' to fit without it") from error  # fmt: skip
    surfaces, errors = grid_surfaces([_read_quotes(p) for p in problems])
    starts = _predicted(net, surfaces, errors)
    for problem, values in zip(problems, starts, strict=True):
        if values is not None:
            _clip(values, problem.bounds)
    return starts


def _predicted(
    net: CalibrationNetwork, surfaces: torch.Tensor, errors: Sequence[str | None]
) -> list[dict[str, float] | None]:
    """The network's parameters for each surface (a row of ``surfaces`` ``(S, 66)``), in one
    forward pass; None where the surface has an error
    (:func:`qfnet.calibration_network.grid_surfaces`)."""
    usable = [i for i, error in enumerate(errors) if error is None]
    out: list[dict[str, float] | None] = [None] * len(errors)
    if not usable:
        return out
    predicted = predict(net, surfaces[usable])  # (S',) per parameter
    rows = torch.stack([predicted[name] for name in NAMES], dim=1).tolist()  # one conversion
    for i, row in zip(usable, rows, strict=True):
        out[i] = dict(zip(NAMES, row, strict=True))
    return out


def register() -> None:
    """Register the ``network`` method and the network global start (done on import; idempotent,
    so a caller may make sure of it).

    Examples:
        >>> from pricing.calibration import available_methods
        >>> register()
        >>> available_methods("heston").count("network")
        1
    """
    register_method("heston", "network", fit_with_network, options=("network",))
    register_batch_method("heston", "network", fit_many_with_network)
    register_start("heston", "network", network_start, many=network_starts)


register()
