"""Heston calibration through the neural surrogate: registers ``calibrate(..., method="surrogate")``.

The surrogate (:mod:`qfnet.surrogate`) maps (parameters, maturity, log-moneyness) to an implied
vol in one batched forward pass, so a Sobol scan of its whole parameter domain and a batched
Levenberg-Marquardt (exact Jacobian by autograd through the network) are cheap. By default the
result is then polished by a few ``direct`` iterations with the exact pricer on all quotes (option
``polish=False`` returns the surrogate's own optimum, within the surrogate's error of it). The
surrogate stage uses the quotes inside the surrogate's domain (maturity and moneyness ranges).

Importing this module registers the method (``qfnet calibrate`` does so); ``pricing`` cannot
import ``qfnet``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pricing.calibration import (
    CalibrationProblem,
    FitOutput,
    bounds_reached,
    check_start_in_box,
    register_method,
)
from pricing.calibration_heston import (
    DEFAULT_BOUNDS,
    NAMES,
    calibrate_surfaces,
    global_starts,
    surfaces_from_quotes,
)
from pricing.heston import otm_implied_vol
from pricing.least_squares import elementwise_jacobian, levenberg_marquardt
from qfnet._paths import file_version
from qfnet.surrogate import SurrogateNet, default_surrogate_path, load_surrogate

__all__ = ["fit_with_surrogate"]

# A step lowering the cost by under 1e-6 relative ends the fit: a float32 surrogate's cost is
# only good to ~1e-7 relative (tighter tolerances chase its rounding), and its vols to ~1e-5;
# the polish, if any, finishes the job with the exact pricer.
_TOLERANCES = {"ftol": 1e-6, "xtol": 1e-8, "gtol": 1e-10}
POLISHED_FTOL = 1e-4
"""``ftol`` of the surrogate stage where the exact pricer polishes its answer: there the stage
only brings the polish's start near, and its optimum lies off the exact one by the surrogate's
own error (0.35 to 1 bp of exact RMSE on the benchmark's noisy surfaces traced). On the
benchmark's 20 surfaces its steps that lowered the cost by under 1e-4 relative, or were
rejected at the float32 cost's rounding while the damping grew, took a tenth of a polished
fit's time (4 ms of 42; 14.0 steps in all against 12.1) and moved no polished RMSE by 1e-7 bp
(nor on 75 more, with 0, 50 and 200 bp noise)."""
SURROGATE_SCAN_WITH_PROPOSALS = 64
"""Scan points of the surrogate's domain kept beside a start provider's proposal (1024 without)."""


def _surrogate(path: str | os.PathLike[str] | None) -> SurrogateNet:
    """:func:`qfnet.surrogate.load_surrogate`, cached per file version
    (:func:`qfnet._paths.file_version`: a retrained file is reloaded): a history of surfaces
    calibrated one call each loads and verifies the file once (~6 ms a call). The cached network
    stays inside this module, which never trains it."""
    target = Path(path) if path is not None else default_surrogate_path()
    if target.is_dir() and (target / "model.pt").exists():  # a run, as load_surrogate reads it
        target = target / "model.pt"
    version = file_version(target)
    if version is None:  # load_surrogate's own message (no such file, the shipped file's hint)
        return load_surrogate(target)
    return _cached_surrogate(target.resolve(), version)


@functools.lru_cache(maxsize=4)
def _cached_surrogate(path: Path, version: tuple[int, int, int]) -> SurrogateNet:
    return load_surrogate(path)


def _check_heston(net: Any, source: str = "the surrogate") -> None:
    """Refuse a surrogate of another model (a SABR one failed on a bare ``KeyError: 'v0'``)."""
    if net.domain.model != "heston":
        raise ValueError(f"{source} is a {net.domain.model} surrogate; method 'surrogate' "
                         "calibrates Heston with a Heston surrogate")  # fmt: skip


def _box(net: Any, bounds: Mapping[str, tuple[float, float]] | None) -> tuple[torch.Tensor, ...]:
    _check_heston(net)
    domain = {name: (low, high) for name, low, high in net.domain.params}
    for name, (low, high) in (bounds or {}).items():
        if name not in domain:
            raise ValueError(f"unknown Heston parameter in bounds: {name!r}")
        inside = (max(low, domain[name][0]), min(high, domain[name][1]))
        if inside[0] > inside[1]:  # was "bounds must be numbers with lower <= upper"
            raise ValueError(f"bounds[{name!r}]: ({low:g}, {high:g}) lies outside the surrogate's "
                             f"domain {name} [{domain[name][0]:g}, {domain[name][1]:g}]")  # fmt: skip
        domain[name] = inside
    lower = torch.tensor([domain[n][0] for n in NAMES], dtype=torch.float64)
    upper = torch.tensor([domain[n][1] for n in NAMES], dtype=torch.float64)
    return lower, upper


def fit_with_surrogate(
    net: Any,
    *,
    maturity: torch.Tensor,
    log_moneyness: torch.Tensor,
    market_iv: torch.Tensor,
    weight: torch.Tensor,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    seed: int = 0,
    n_scan: int = 1024,
    n_starts: int = 3,
    max_iterations: int = 50,
    x0: torch.Tensor | None = None,
    ftol: float = _TOLERANCES["ftol"],
) -> tuple[torch.Tensor, torch.Tensor, bool, int]:
    """Least-squares fit of the surrogate's vols to one surface.

    The starts are every row of ``x0`` (extra starts, ``(K, 5)``, clipped to the box) and the
    best ``max(n_starts - K, 1)`` points of a Sobol scan of ``n_scan`` points of the surrogate's
    domain, ranked by their cost; beside ``x0`` the scan's points race only where one of them has a
    lower cost than every ``x0`` row (as ``direct``'s do, :func:`pricing.calibration_heston.
    calibrate_surfaces`). ``ftol``: a step lowering the cost by less than this, relative, ends
    the fit (:data:`POLISHED_FTOL` where a polish follows).

    Shape:
        ``maturity``, ``log_moneyness``, ``market_iv``, ``weight`` (square-root weights): ``(N,)``.

    Returns:
        ``params (5,)``, surrogate vols ``(N,)``, converged, iterations.

    Raises:
        pricing.datasets.DomainError: a quote outside the surrogate's domain (maturity and
            moneyness), naming its field and index.

    Examples:
        Recover the parameters of a surface made by the surrogate itself:

        >>> from qfnet.surrogate import implied_vol
        >>> net = load_surrogate()
        >>> t = torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0, 1.0], dtype=torch.float64)
        >>> k = torch.tensor([-0.1, 0.0, 0.1, -0.1, 0.0, 0.1], dtype=torch.float64)
        >>> iv = implied_vol(net, maturity=t, log_moneyness=k, v0=0.04, kappa=1.5, theta=0.05,
        ...                  sigma=0.5, rho=-0.7)
        >>> params, vols, converged, _ = fit_with_surrogate(net, maturity=t, log_moneyness=k,
        ...     market_iv=iv, weight=torch.ones(6, dtype=torch.float64))
        >>> [round(p, 3) for p in params.tolist()], converged  # v0, kappa, theta, sigma, rho
        ([0.04, 1.5, 0.05, 0.5, -0.7], True)
    """
    lower, upper = _box(net, bounds)
    # its vol is NaN: every start's cost was, and the fit ended anywhere, "not converged"
    centre = {name: 0.5 * (low + high) for name, low, high in net.domain.params}
    net.domain.check({**centre, "maturity": maturity, "log_moneyness": log_moneyness})
    if n_scan == 0 and x0 is None:  # no start at all (a negative-dimension RuntimeError)
        raise ValueError("fit_with_surrogate needs n_scan > 0 or x0 starts")
    surrogate_vols = _vols_in_box(net, maturity, log_moneyness)

    def residual(params: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        return weight * (surrogate_vols(params) - market_iv)

    engine = torch.quasirandom.SobolEngine(5, scramble=True, seed=seed)
    # draw(0) raises: no scan beside the x0 starts is an empty one
    unit = (
        engine.draw(n_scan, dtype=torch.float64)
        if n_scan
        else torch.zeros(0, 5, dtype=torch.float64)
    )
    points = lower + (upper - lower) * unit
    extra = torch.zeros(0, 5, dtype=torch.float64) if x0 is None else x0
    points = torch.cat([torch.minimum(torch.maximum(extra, lower), upper), points])
    with torch.no_grad():
        cost = torch.nan_to_num((residual(points.unsqueeze(1), None) ** 2).sum(-1), nan=math.inf)
    starts = points[_start_rows(cost, len(extra), n_starts)]
    solved = levenberg_marquardt(elementwise_jacobian(residual, len(maturity)), starts,
                                 lower=lower, upper=upper, max_iterations=max_iterations,
                                 **(_TOLERANCES | {"ftol": ftol}))  # fmt: skip
    best = int(torch.nan_to_num(solved.cost, nan=math.inf).argmin())
    x = solved.x[best]
    # not from the residual: a weight-0 quote's vol came back as its market vol
    with torch.no_grad():
        vols = surrogate_vols(x.unsqueeze(0))  # (N,)
    return x, vols, bool(solved.converged[best]), int(solved.iterations[best])


def _start_rows(cost: torch.Tensor, n_extra: int, n_starts: int) -> torch.Tensor:
    """Rows of the starts that race: the ``n_extra`` first (the x0 rows) always, then the
    ``max(n_starts - n_extra, 1)`` scan points of lowest ``cost`` ``(n_extra + n_scan,)``, beside
    x0 rows only where one of them beats every x0 row, as ``direct``'s do (at least one: with a
    caller's x0 beside the network's proposal, ``n_starts`` 2, no scan point raced, however far
    both were). (Ranked together with the network's proposal, two starts raced on each of the
    benchmark's 20 surfaces and ended at the same surrogate optimum on all 20, the batch running
    on for the slower one, up to 25 steps: a tenth of each fit's time.)

    Examples:
        >>> _start_rows(torch.tensor([1.0, 3.0, 2.0]), 1, 2).tolist()  # the x0 row beats both
        [0]
        >>> _start_rows(torch.tensor([2.5, 3.0, 2.0]), 1, 2).tolist()
        [0, 2]
        >>> _start_rows(torch.tensor([2.5, 3.0, 2.0, 1.0]), 2, 2).tolist()  # two x0 rows beaten
        [0, 1, 3]
    """
    scan = cost[n_extra:]
    best = torch.argsort(scan)[: max(n_starts - n_extra, 1)] + n_extra
    if n_extra and not (len(scan) and bool(scan.min() < cost[:n_extra].min())):
        best = best[:0]
    return torch.cat([torch.arange(n_extra), best])


def _vols_in_box(
    net: Any, maturity: torch.Tensor, log_moneyness: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The surrogate's vols at the quotes ``(N,)`` for params ``(..., M, 5)`` in :data:`NAMES`'
    order (``M`` 1 or N) inside its domain, NaN at the quotes outside it:
    :func:`qfnet.surrogate.implied_vol` with ``out_of_domain="nan"``, the quotes checked once.
    (It converts and checks every input and the domain on each call: 1.38 ms for the vols and
    Jacobian of a 62-quote surface, 1.05 ms here. The fit's params stay in its box, itself
    inside the domain.) The net's input columns are ``net.domain.input_names``: its parameters
    by name, then maturity and log-moneyness."""
    centre = {name: 0.5 * (low + high) for name, low, high in net.domain.params}
    inside = torch.as_tensor(net.domain.contains({**centre, "maturity": maturity,
                                                  "log_moneyness": log_moneyness}),
                             device=maturity.device)  # fmt: skip
    quotes = torch.stack([maturity, log_moneyness], dim=-1)  # (N, 2)
    order = [NAMES.index(name) for name in centre]  # the net's parameter columns, by name

    def vols(params: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(params.shape[:-1], maturity.shape)  # (..., N)
        columns = params[..., order]
        x = torch.cat([columns.expand(*shape, len(order)), quotes.expand(*shape, 2)], dim=-1)
        return torch.where(inside, net(x.reshape(-1, x.shape[-1])).reshape(shape), math.nan)

    return vols


def _check_start(net: Any, problem: CalibrationProblem) -> None:
    """The caller's start, a start of the surrogate stage, lies in its box (the surrogate's
    domain within the bounds): it was clipped into it without a word."""
    lower, upper = (b.tolist() for b in _box(net, problem.bounds))
    box = {name: (lo, hi) for name, lo, hi in zip(NAMES, lower, upper, strict=True)}
    check_start_in_box(problem.x0, box, method="heston 'surrogate'",
                       widen="the surrogate was trained inside it only (method 'direct' starts "
                             "anywhere in its own box)")  # fmt: skip


def _fit_surrogate(problem: CalibrationProblem) -> FitOutput:
    options = dict(problem.options)
    path = options.pop("surrogate", None)
    try:
        net = _surrogate(path)
    except FileNotFoundError as error:
        raise NotImplementedError(
            f"method 'surrogate' needs a trained surrogate: {error}"
        ) from error
    _check_heston(net, f"option 'surrogate' ({path})")
    polish = bool(options.pop("polish", True))
    _check_start(net, problem)
    x0 = global_starts(problem, options, scan=SURROGATE_SCAN_WITH_PROPOSALS)
    quotes = problem.quotes
    tensor = lambda values: torch.tensor(np.asarray(values, dtype=float))  # noqa: E731
    k = np.log(quotes["strike"] / quotes["forward"]).to_numpy()
    centre = {name: 0.5 * (low + high) for name, low, high in net.domain.params}
    inside = np.asarray(net.domain.contains({**centre, "maturity": quotes["maturity"].to_numpy(),
                                             "log_moneyness": k}))  # fmt: skip
    if inside.sum() < len(NAMES) or not (polish or inside.all()):
        need = f"at least {len(NAMES)}" if polish else "every quote"
        raise NotImplementedError(
            f"the surrogate's domain covers {int(inside.sum())} of {len(quotes)} quotes; the "
            f"surrogate stage needs {need} inside it"
            + ("" if polish else "; use polish=True to fit the others with the exact pricer")
        )
    params, vols, converged, iterations = fit_with_surrogate(
        net,
        maturity=tensor(quotes["maturity"][inside]),
        log_moneyness=tensor(k[inside]),
        market_iv=tensor(quotes["market_iv"][inside]),
        weight=tensor(np.sqrt(problem.weights[inside])),
        bounds=problem.bounds,
        seed=problem.seed,
        x0=x0,
        ftol=POLISHED_FTOL if polish else _TOLERANCES["ftol"],
        **{k: options.pop(k) for k in ("n_scan", "n_starts", "max_iterations") if k in options},
    )
    if polish:
        surfaces = surfaces_from_quotes([quotes], [problem.weights])
        polished, reference_vols, converged_t, more = calibrate_surfaces(
            surfaces, bounds=problem.bounds, x0=params.unsqueeze(0), n_scan=0, n_starts=1,
            max_iterations=options.pop("polish_iterations", 100),
        )  # fmt: skip
        params, vols = polished[0], reference_vols[0]
        converged, iterations = bool(converged_t[0]), iterations + int(more[0])
    values = dict(zip(NAMES, params.tolist(), strict=True))
    # the box of the last fit: direct's (polish) or the surrogate's domain within the bounds
    if polish:
        box = DEFAULT_BOUNDS | dict(problem.bounds or {})
        lower, upper = (np.array([box[n][i] for n in NAMES]) for i in (0, 1))
    else:
        lower, upper = (b.numpy() for b in _box(net, problem.bounds))
    edges = bounds_reached(NAMES, params.numpy(), lower, upper)
    if not polish:  # the Heston model's vols at the surrogate's optimum, as other methods report
        vols = otm_implied_vol(ratio=tensor(quotes["strike"] / quotes["forward"]),
                               maturity=tensor(quotes["maturity"]), **values)  # fmt: skip
    return FitOutput(values, vols.numpy(), converged, iterations, edges)


register_method("heston", "surrogate", _fit_surrogate,
                options=("global_start", "max_iterations", "n_scan", "n_starts", "polish",
                         "polish_iterations", "surrogate"))  # fmt: skip
