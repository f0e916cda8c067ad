"""SABR calibration, one smile per expiry, all expiries (and starting points) in one batch.

Registered methods: ``direct`` (Hagan's formula of :mod:`pricing.sabr`, exact autograd
Jacobian, batched Levenberg-Marquardt from a small grid of starts with alpha matched to the ATM
vol) and ``quantlib`` (scipy's ``least_squares`` over ``ql.sabrVolatility``, the reference, one
smile at a time).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pricing._validation import check_nonnegative, check_positive, check_positive_int, check_real
from pricing.calibration import (
    MODEL_PARAMETERS,
    CalibrationProblem,
    FitOutput,
    bounds_reached,
    check_bounds,
    check_start_in_box,
    register_method,
)
from pricing.least_squares import (
    LeastSquaresResult,
    ResidualFn,
    elementwise_jacobian,
    levenberg_marquardt,
    value_and_jacobian,
)
from pricing.quote_cleaning import FORWARD_ROUNDING
from pricing.quotes import QuoteError, shifts
from pricing.sabr import lognormal_vol

__all__ = [
    "DEFAULT_BETA",
    "FREE_BETA_START",
    "SmileBatch",
    "fit_smile_scipy",
    "fit_smiles",
    "smile_batch",
]

DEFAULT_BETA = 1.0
FREE_BETA_START = 0.5
"""Where both fitters start a free beta when the caller's ``x0`` gives none (and the scipy
reference starts it without ``x0``): the middle of [0, 1]. A start on the bound beta = 1 (the
``direct`` method's, while ``quantlib`` started at 0.5) sits where a projected step cannot move
beta past the edge and the two methods began from different points."""
_RHO_GRID = (-0.75, -0.4, 0.0, 0.4)
_NU_GRID = (0.1, 0.4, 1.0, 2.5)
_ESCAPE_RHO = (-0.75, 0.75)
_ESCAPE_NU = 0.4
"""Where :func:`fit_smiles` refits an expiry whose best fit ended on nu's lower bound (see
:func:`_nu_floor_escapes`)."""
_FREE_BETA_GRID = (0.5, 1.0)
_UNCOVERED_SD = 0.1
_UNCOVERED_STARTS = 4
"""An expiry whose nearest weighted strike lies over ``_UNCOVERED_SD`` standard deviations (ATM
vol times sqrt(T)) from the forward refines at least ``_UNCOVERED_STARTS`` grid starts: its ATM
vol, which sets the grid's alpha, is interpolated across the gap (0.94 for a true 0.42 on a
30-year smile of strikes 4 to 6 and 800 to 1000 around 100), and the grid's best two both ended in
one local minimum there (152 bp, reported converged) where four reached the exact fit. Of 5,000
random smiles of 5 to 9 strikes, mostly wings (T 0.25 to 30 years), 90 ended over 0.01 bp above
scipy's fit (up to 1,093 bp) with two starts, all but one with their nearest strike 0.12 to 1.5
deviations away; with this rule 2 did (2.9 and 8.8 bp). Smiles with a strike at the money keep
``n_starts`` and their cost."""
# A step lowering the cost by under 1e-10 relative ends a fit: the RMSE is then within ~1e-8
# relative of the optimum (scipy's least_squares stops at 1e-8).
_TOLERANCES = {"ftol": 1e-10, "xtol": 1e-10, "gtol": 1e-12}
_NAMES = MODEL_PARAMETERS["sabr"]
_BOX = {"beta": (0.0, 1.0), "rho": (-0.9999, 0.9999), "nu": (1e-8, 10.0)}
"""Default bounds of both fitters (alpha's are each fitter's own)."""


@dataclass(frozen=True)
class SmileBatch:
    """Smiles padded to a common number of strikes M (padding: strike = forward, weight 0).

    Attributes:
        maturity, forward, shift: shape ``(E, 1)``.
        strike, market_iv, weight: shape ``(E, M)``.
        rows: for each expiry, the quote-table positions of its strikes (for unpadding).

    Shape:
        ``E`` expiries of at most ``M`` strikes (see the attributes).

    Examples:
        >>> table = pd.DataFrame({"strike": [90.0, 100.0, 110.0], "forward": 100.0,
        ...                       "maturity": 1.0, "market_iv": 0.2})
        >>> batch = smile_batch(table, np.ones(3))
        >>> tuple(batch.maturity.shape), tuple(batch.strike.shape), batch.weight.tolist()
        ((1, 1), (1, 3), [[1.0, 1.0, 1.0]])
    """

    maturity: torch.Tensor
    forward: torch.Tensor
    shift: torch.Tensor
    strike: torch.Tensor
    market_iv: torch.Tensor
    weight: torch.Tensor
    rows: list[np.ndarray]


def smile_batch(quotes: pd.DataFrame, weights: np.ndarray) -> SmileBatch:
    """Group a prepared quote table by expiry into padded tensors.

    An expiry's forward is the mean of its rows' ``forward`` values, which must agree within
    :data:`pricing.quote_cleaning.FORWARD_ROUNDING` of the (shifted) forward; its ``shift``
    is one value, and one of its quotes at least has a positive weight (else a
    :class:`pricing.quotes.QuoteError`).

    Raises:
        ValueError: naming ``weights`` (not one finite weight >= 0 per quote) or ``market_iv``
            (not finite and > 0), and the :class:`pricing.quotes.QuoteError` above.

    Shape:
        Output tensors ``(E, 1)`` or ``(E, M)`` for E expiries of at most M strikes.

    Examples:
        >>> table = pd.DataFrame({"strike": [90.0, 110.0, 100.0], "forward": 100.0,
        ...                       "maturity": [0.5, 0.5, 1.0], "market_iv": 0.2})
        >>> batch = smile_batch(table, np.ones(3))
        >>> batch.strike.tolist(), [rows.tolist() for rows in batch.rows]
        ([[90.0, 110.0], [100.0, 100.0]], [[0, 1], [2]])
    """
    # numpy columns once, grouped by one stable sort: per-expiry pandas lookups cost as much as
    # the batched fit itself (0.25 ms a smile)
    maturity = quotes["maturity"].to_numpy(float)
    order = np.argsort(maturity.round(10), kind="stable")  # table order within an expiry
    _, first, counts = np.unique(maturity[order].round(10), return_index=True, return_counts=True)
    groups = np.split(order, first[1:])
    expiry = np.repeat(np.arange(len(groups)), counts)  # (R,) in sorted order
    slot = np.arange(len(order)) - np.repeat(first, counts)
    shift = shifts(quotes).to_numpy(float)[order]
    w = np.array(weights, dtype=float)  # a copy: torch refuses a reversed array's strides
    if w.shape != maturity.shape:  # a longer array was cut to the table without a word
        raise ValueError(f"weights: shape {w.shape} for {len(maturity)} quotes")
    # a NaN vol failed as "alpha must be finite and > 0", and negative weights as "every quote
    # has weight 0"
    check_nonnegative(weights=w)
    check_positive(market_iv=np.array(quotes["market_iv"], dtype=float))
    w = w[order]
    f_row = quotes["forward"].to_numpy(float)[order]
    varies = np.maximum.reduceat(shift, first) > np.minimum.reduceat(shift, first)
    # forwards of one expiry agree to FORWARD_ROUNDING, as parity_forwards reads them (100.0
    # beside 100.04 passed there and was refused here, at 1e-9): their mean is the smile's
    # forward; two smiles under one maturity were averaged
    f_spread = np.maximum.reduceat(f_row, first) - np.minimum.reduceat(f_row, first)
    scale = np.maximum.reduceat(np.abs(f_row + shift), first)  # of the shifted forward
    forward_varies = f_spread > FORWARD_ROUNDING * scale * (1 + 1e-9)
    unweighted = ~np.maximum.reduceat(w > 0, first)
    for e in np.flatnonzero(varies | forward_varies | unweighted)[:1]:
        t0, rows = maturity[groups[e][0]], slice(first[e], first[e] + counts[e])
        if varies[e]:
            raise QuoteError(f"expiry T={t0:.6g}: shift varies within the smile "
                             f"({shift[rows].min():g} to {shift[rows].max():g}); SABR takes one "
                             "shift per expiry (an empty shift is 0)", column="shift")  # fmt: skip
        if forward_varies[e]:
            raise QuoteError(f"expiry T={t0:.6g}: forward varies within the smile "
                             f"({f_row[rows].min():.10g} to {f_row[rows].max():.10g}); SABR "
                             "fits one forward per expiry (values within "
                             f"{FORWARD_ROUNDING:.2%} of it are read as rounding)",
                             column="forward")  # fmt: skip
        raise QuoteError(f"expiry T={t0:.6g}: every quote has weight 0; SABR fits each expiry on "
                         "its own (drop the expiry or weight it)", column="weight")  # fmt: skip
    forward = np.add.reduceat(f_row, first) / counts
    heads = np.stack([maturity[order][first], forward, shift[first]], axis=1)  # (E, 3)
    fields = {name: np.zeros((len(groups), counts.max())) for name in ("strike", "iv", "w")}
    fields["strike"][:] = forward[:, None]  # padding: at the forward
    fields["strike"][expiry, slot] = quotes["strike"].to_numpy(float)[order]
    fields["iv"][expiry, slot] = quotes["market_iv"].to_numpy(float)[order]
    # each expiry is its own fit, with absolute tolerances: weights of mean 1 per smile (an
    # expiry weighted 1e-10 of the others stopped early yet reported converged)
    fields["w"][expiry, slot] = np.sqrt(w / (np.add.reduceat(w, first) / counts)[expiry])
    t = torch.tensor
    return SmileBatch(
        t(heads[:, :1]),
        t(heads[:, 1:2]),
        t(heads[:, 2:]),
        t(fields["strike"]),
        t(fields["iv"]),
        t(fields["w"]),
        [np.asarray(g) for g in groups],
    )


def _atm_vol(batch: SmileBatch) -> torch.Tensor:
    """Market vol at the forward, linear in log-moneyness (flat beyond the weighted strikes)."""
    out = []
    for e, rows in enumerate(batch.rows):
        n = len(rows)
        k = torch.log((batch.strike[e, :n] + batch.shift[e]) / (batch.forward[e] + batch.shift[e]))
        vol, weight = batch.market_iv[e, :n].numpy(), batch.weight[e, :n].numpy()
        out.append(_vol_at_the_money(k.numpy(), vol, weight))
    return torch.tensor(out, dtype=batch.forward.dtype).unsqueeze(-1)  # (E, 1)


def _vol_at_the_money(log_moneyness: np.ndarray, vol: np.ndarray, weight: np.ndarray) -> float:
    """The vol at log-moneyness 0, linear between the quotes of positive weight (all of them if
    none has one; flat beyond them), which may come in any order (np.interp needs them
    increasing). A quote of weight 0 says nothing: an ATM vol of 1e-5 weighted 0 capped the direct
    fit's alpha at 0.101 for a true 1.8 (its box is a thousandth to a thousand times this vol)."""
    keep = np.asarray(weight) > 0
    keep = keep if keep.any() else np.ones_like(keep)
    k, v = np.asarray(log_moneyness)[keep], np.asarray(vol)[keep]
    order = np.argsort(k)
    return float(np.interp(0.0, k[order], v[order]))


def _vols(
    batch: SmileBatch, params: torch.Tensor, expiry: torch.Tensor, level: torch.Tensor
) -> torch.Tensor:
    """Model vols of the smiles ``expiry`` (B,) at params (B, M, 4) = (a, beta, rho, nu).

    The solver works with ``a = alpha / level^(1 - beta)``. With ``level = F + shift``, ``a`` is
    about the ATM vol whatever beta: that straightens the long curved valley of (alpha, beta)
    that a free beta otherwise creates. With ``level = 1``, ``a`` is alpha itself (for bounds on
    alpha while beta is free: a box in alpha is no box in ``a``).

    Shape:
        ``params``: ``(B, M, 4)`` with M = 1 or the padded strike count; ``level``: ``(E, 1)``;
        output ``(B, M)``.
    """
    a, beta, rho, nu = params.unbind(-1)
    alpha = a * level[expiry] ** (1 - beta)
    return lognormal_vol(
        forward=batch.forward[expiry],
        strike=batch.strike[expiry],
        maturity=batch.maturity[expiry],
        alpha=alpha,
        beta=beta,
        rho=rho,
        nu=nu,
        shift=batch.shift[expiry],
    )


def _candidates(
    batch: SmileBatch, betas: tuple[float, ...], atm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid starts (G per expiry): beta, rho, nu combinations with alpha near the ATM vol ``atm``
    (:func:`_atm_vol`).

    Shape:
        ``atm``: ``(E, 1)``. Returns starts ``(E * G, 4)`` and their expiry index ``(E * G,)``.
    """
    grid = torch.tensor(
        [(b, r, n) for b in betas for r in _RHO_GRID for n in _NU_GRID], dtype=batch.forward.dtype
    )  # (G, 3)
    n_exp, n_grid = batch.forward.shape[0], grid.shape[0]
    expiry = torch.arange(n_exp).repeat_interleave(n_grid)  # (E * G,)
    b, r, n = grid.repeat(n_exp, 1).unbind(-1)
    # Leading-order ATM match, a ~ atm / (1 + T (2 - 3 rho^2) nu^2 / 24): a start for the
    # solver, defined for every grid point (the exact cubic root may not exist).
    correction = 1 + batch.maturity[expiry, 0] * (2 - 3 * r * r) * n * n / 24
    a = atm[expiry, 0] / correction.clamp(min=0.1)
    return torch.stack([a, b, r, n], dim=-1), expiry


def _money_uncovered(batch: SmileBatch, atm: torch.Tensor) -> torch.Tensor:
    """Whether no weighted strike of an expiry lies within ``_UNCOVERED_SD`` standard deviations
    (``atm * sqrt(T)``, ``atm`` ``(E, 1)`` from :func:`_atm_vol`) of its forward, shape ``(E,)``."""
    distance = torch.log((batch.strike + batch.shift) / (batch.forward + batch.shift)).abs()
    distance = torch.where(batch.weight > 0, distance, torch.full_like(distance, float("inf")))
    return distance.min(-1).values > _UNCOVERED_SD * atm[:, 0] * batch.maturity[:, 0].sqrt()


def _bounds(
    batch: SmileBatch,
    beta: float | None,
    user: Mapping[str, tuple[float, float]] | None,
    level: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box per expiry of (a, beta, rho, nu) (see :func:`_vols` for ``a`` and ``level``), shape
    ``(E, 4)`` each; a fixed beta has equal bounds. User bounds on alpha become bounds on ``a``
    at the fixed beta (a free beta with bounded alpha has ``level = 1``: ``a`` is alpha)."""
    atm = _atm_vol(batch)[:, 0]
    scale = level[:, 0] ** (1 - (1.0 if beta is None else beta))
    user = dict(user or {})
    if "alpha" in user:
        user["alpha"] = tuple(torch.as_tensor(v, dtype=atm.dtype) / scale for v in user["alpha"])
    box = _BOX | {
        "alpha": (atm * 1e-3, atm * 1e3),  # level 1 comes with the user's alpha bounds
        "beta": _BOX["beta"] if beta is None else (beta, beta),
    }
    box.update(user)
    lower, upper = (
        torch.stack(
            [torch.as_tensor(box[n][i], dtype=atm.dtype).expand_as(atm) for n in _NAMES], -1
        )
        for i in (0, 1)
    )
    return lower, upper


def _solver_box(
    batch: SmileBatch, beta: float | None, bounds: Mapping[str, tuple[float, float]] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The solver's ``level`` ``(E, 1)`` and box ``(E, 4)`` each of (a, beta, rho, nu) (see
    :func:`_vols` and :func:`_bounds`)."""
    level = batch.forward + batch.shift  # (E, 1)
    if beta is None and "alpha" in (bounds or {}):
        level = torch.ones_like(level)
    return level, *_bounds(batch, beta, bounds, level)


def _direct_at_bounds(
    batch: SmileBatch,
    beta: float | None,
    bounds: Mapping[str, tuple[float, float]] | None,
    params: torch.Tensor,
) -> dict[str, list[str | None]]:
    """:func:`pricing.calibration.bounds_reached` of :func:`fit_smiles`'s ``params`` ``(E, 4)``
    in its box, alpha's bounds taken from ``a`` to alpha as alpha was."""
    level, lower, upper = _solver_box(batch, beta, bounds)
    scale = level[:, 0] ** (1 - params[:, 1])
    lower[:, 0], upper[:, 0] = lower[:, 0] * scale, upper[:, 0] * scale
    return bounds_reached(_NAMES, params.numpy(), lower.numpy(), upper.numpy())


def fit_smiles(
    batch: SmileBatch,
    *,
    beta: float | None = DEFAULT_BETA,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    x0: Mapping[str, float] | None = None,
    n_starts: int = 2,
    max_iterations: int = 100,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Fit SABR to every smile of ``batch`` at once (beta fixed, or free when ``beta`` is None).

    A grid of starts per expiry is scored in one batched call; the ``n_starts`` best of each
    expiry (at least 4 where no weighted strike is within a tenth of a standard deviation of the
    forward: the grid's ATM vol is then a guess across the gap, and two starts could both end in
    one local minimum), and the caller's ``x0`` (never dropped on its early cost), are refined
    together by :func:`pricing.least_squares.levenberg_marquardt`, and the best result per expiry
    is kept. An expiry whose best fit stopped on nu's lower bound (where rho moves no vol) is
    refitted once from the rho that makes a rising nu lower the cost, when one does
    (:func:`_nu_floor_escapes`).

    Returns:
        ``params`` ``(E, 4)`` as (alpha, beta, rho, nu), model vols ``(E, M)``, converged ``(E,)``
        and the largest iteration count.

    Examples:
        >>> strikes = [80.0, 90.0, 100.0, 110.0, 120.0]
        >>> vols = lognormal_vol(forward=100.0, strike=strikes, maturity=1.0, alpha=2.0,
        ...                      beta=0.5, rho=-0.3, nu=0.6)
        >>> table = pd.DataFrame({"strike": strikes, "forward": 100.0, "maturity": 1.0,
        ...                       "market_iv": vols.numpy()})
        >>> params, _, converged, _ = fit_smiles(smile_batch(table, np.ones(5)), beta=0.5)
        >>> [round(v, 6) for v in params[0].tolist()], bool(converged[0])
        ([2.0, 0.5, -0.3, 0.6], True)
    """
    check_bounds("sabr", bounds)  # an unknown name was ignored; an inverted pair named no field
    check_positive_int("n_starts", n_starts)  # 0 failed in a tensor reduction
    level, lower, upper = _solver_box(batch, beta, bounds)
    atm = _atm_vol(batch)
    starts, expiry = _candidates(batch, _FREE_BETA_GRID if beta is None else (beta,), atm)
    n_grid = len(starts)
    # the grid's a is about the ATM vol: alpha = a (F + shift)^(1 - beta), then in level units
    starts[:, 0] *= ((batch.forward + batch.shift)[expiry, 0] / level[expiry, 0]) ** (
        1 - starts[:, 1]
    )
    if x0:
        user = {"beta": FREE_BETA_START if beta is None else beta} | dict(x0)
        _check_start_beta(user["beta"], beta)
        _check_start(user, bounds, level, lower, upper)
        extra = torch.tensor([[user[n] for n in _NAMES]], dtype=starts.dtype)
        extra = extra.expand(len(batch.rows), -1).clone()
        extra[:, 0] /= level[:, 0] ** (1 - extra[:, 1])
        starts = torch.cat([starts, extra])
        expiry = torch.cat([expiry, torch.arange(len(batch.rows))])
    starts = torch.nan_to_num(starts, nan=0.0)
    starts = torch.minimum(torch.maximum(starts, lower[expiry]), upper[expiry])

    def residual(params: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return batch.weight[e] * (_vols(batch, params, e, level) - batch.market_iv[e])

    def solve(x0: torch.Tensor, owner: torch.Tensor) -> LeastSquaresResult:
        fn = elementwise_jacobian(lambda p, i: residual(p, owner[i]), batch.strike.shape[1])
        return levenberg_marquardt(fn, x0, lower=lower[owner], upper=upper[owner],
                                   max_iterations=max_iterations, **_TOLERANCES)  # fmt: skip

    cost = (residual(starts[:n_grid].unsqueeze(1), expiry[:n_grid]) ** 2).sum(-1)
    # x0 is always refined: scored with the grid, it was dropped where its early cost was above
    # the grid's best two (an exact 30-year smile of wing strikes was left at 152 bp, reported
    # converged, where scipy from that x0 fits it exactly)
    n_best = torch.where(_money_uncovered(batch, atm), max(n_starts, _UNCOVERED_STARTS), n_starts)
    pick = _best_per_expiry(cost, expiry[:n_grid], len(batch.rows), n_best.tolist())
    pick = torch.cat([pick, torch.arange(n_grid, len(starts))])
    owner = expiry[pick]
    solved = solve(starts[pick], owner)
    best = _best_per_expiry(solved.cost, owner, len(batch.rows), 1)
    again, again_owner = _nu_floor_escapes(
        solved.x[best], lower, upper, residual, batch.strike.shape[1]
    )
    if len(again):  # rare (0 to 3 expiries of 300 noisy random smiles): a small batch
        escaped = solve(again, again_owner)
        escaped = escaped._replace(
            iterations=escaped.iterations + solved.iterations[best][again_owner]
        )
        solved = LeastSquaresResult(
            *(torch.cat(pair) for pair in zip(solved, escaped, strict=True))
        )
        owner = torch.cat([owner, again_owner])
    best = _best_per_expiry(solved.cost, owner, len(batch.rows), 1)
    params = solved.x[best].clone()
    vols = _vols(batch, params.unsqueeze(1), torch.arange(len(batch.rows)), level)
    params[:, 0] *= level[:, 0] ** (1 - params[:, 1])  # a -> alpha
    return params, vols, solved.converged[best], int(solved.iterations[best].max())


def _nu_floor_escapes(
    x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, residual: ResidualFn, n_strikes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh starts for the expiries whose best fit ``x`` ``(E, 4)`` ended with nu on its lower
    bound though rho at one end of :data:`_ESCAPE_RHO` turns the cost's slope in nu downward
    there, and their expiry indices: that rho, nu at :data:`_ESCAPE_NU` (in the box), a and beta
    kept. ``residual`` is ``(params (B, M, 4), expiry (B,)) -> (B, n_strikes)``.

    At nu = 0 the smile does not depend on rho, so the solver sees no slope in rho and stops
    (reported converged) wherever rho left nu's slope pointing below the bound, though the rho
    of the other sign lowers the cost as soon as nu rises.

    Shape:
        ``x``, ``lower``, ``upper``: ``(E, 4)``. Returns starts ``(S, 4)`` and indices ``(S,)``.
    """
    trapped = (x[:, 3] <= lower[:, 3]) & (lower[:, 3] < upper[:, 3]) & (lower[:, 2] < upper[:, 2])
    owner = torch.nonzero(trapped).squeeze(-1).repeat_interleave(len(_ESCAPE_RHO))
    if not len(owner):
        return x[:0], owner
    starts = x[owner].clone()
    starts[:, 2] = torch.tensor(_ESCAPE_RHO, dtype=x.dtype).repeat(int(trapped.sum()))
    starts = torch.minimum(torch.maximum(starts, lower[owner]), upper[owner])
    r, jac = value_and_jacobian(
        lambda p, i: residual(p, owner[i]), starts, torch.arange(len(owner)), n_strikes
    )
    slope = (jac[..., 3] * r).sum(-1).view(-1, len(_ESCAPE_RHO))  # d cost / d nu at the bound
    side = slope.argmin(-1)
    keep = slope.gather(-1, side.unsqueeze(-1)).squeeze(-1) < 0  # else a true minimum in nu
    chosen = (torch.arange(len(side)) * len(_ESCAPE_RHO) + side)[keep]
    starts, owner = starts[chosen], owner[chosen]
    starts[:, 3] = torch.clamp(
        torch.tensor(_ESCAPE_NU, dtype=x.dtype), lower[owner, 3], upper[owner, 3]
    )
    return starts, owner


def _check_start(
    start: Mapping[str, float],
    bounds: Mapping[str, tuple[float, float]] | None,
    level: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
) -> None:
    """:func:`pricing.calibration.check_start_in_box` of :func:`fit_smiles`' start (alpha, beta,
    rho, nu), one for every expiry, in the box of (a, beta, rho, nu) of each ``(E, 4)``: alpha
    within the caller's bounds, else within a thousandth to a thousand times each expiry's ATM
    vol (``a``'s default box at the start's beta)."""
    box = {name: (float(lower[:, i].max()), float(upper[:, i].min()))
           for i, name in enumerate(_NAMES)}  # fmt: skip
    if "alpha" in (bounds or {}):  # the caller's, exactly (a's are theirs over a power, rounded)
        box["alpha"] = tuple(float(b) for b in bounds["alpha"])
    else:
        scale = level[:, 0] ** (1 - float(start["beta"]))  # a -> alpha
        box["alpha"] = (float((lower[:, 0] * scale).max()), float((upper[:, 0] * scale).min()))
    check_start_in_box(start, box, method="sabr 'direct'")


def _check_start_beta(start: float, beta: float | None) -> None:
    """A start's beta is the fixed ``beta`` (``None``: beta is fitted, any start in its box): the
    box check's advice, to widen ``bounds``, cannot move a beta that ``beta`` fixes."""
    if beta is not None and float(start) != float(beta):
        raise ValueError(f"x0's beta {float(start):g} differs from the fixed beta {float(beta):g} "
                         "(start at it, or pass beta=None to fit beta)")  # fmt: skip


def _best_per_expiry(
    cost: torch.Tensor, expiry: torch.Tensor, n_expiries: int, k: int | Sequence[int]
) -> torch.Tensor:
    """Indices of the k lowest finite costs for each expiry (``k`` one count, or one per expiry)."""
    cost = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))
    counts = [k] * n_expiries if isinstance(k, int) else k
    picks = []
    for e in range(n_expiries):
        rows = torch.nonzero(expiry == e).squeeze(-1)
        picks.append(rows[torch.argsort(cost[rows])[: counts[e]]])
    return torch.cat(picks)


def _warn_if_underdetermined(
    batch: SmileBatch, free_beta: bool, bounds: Mapping[str, tuple[float, float]] | None
) -> None:
    """Say (once) which expiries have fewer distinct weighted strikes than free parameters: their
    fit is one of many exact ones (two strikes gave rho -0.9999 here and -0.25 in scipy, both with
    a zero error, for a true -0.3), reported as converged. Beta is free only with ``free_beta``,
    and equal bounds fix a parameter (they were counted as free: a smile of three quotes with
    rho fixed was said to be under-determined). Strikes, not quotes: a call and a put at one
    strike are one point of the smile (four quotes at the forward gave nu 1.0 here and 0.49 in
    scipy, without a word)."""
    fixed = {n for n, (low, high) in (bounds or {}).items() if float(low) == float(high)}
    free = [n for n in _NAMES if (free_beta or n != "beta") and n not in fixed]
    names, n_free = ", ".join(free), len(free)
    counts = [len(torch.unique(k[w > 0])) for k, w in zip(batch.strike, batch.weight, strict=True)]
    few = [f"{count} at T={float(batch.maturity[e, 0]):.6g}"
           for e, count in enumerate(counts) if count < n_free]  # fmt: skip
    if few:
        warnings.warn(f"SABR expiries with fewer distinct weighted strikes than the {n_free} free "
                      f"parameters ({names}): {', '.join(few)}; their parameters are not "
                      "identified (any of many exact fits)", stacklevel=4)  # fmt: skip


def _warn_if_beta_at_an_end(maturity: Sequence[float], beta: Sequence[float]) -> None:
    """With a free beta, say (once) which expiries' beta ended at 0 or 1: a smile barely
    identifies beta apart from rho and nu (the DAX surface gave 0 or 1 on six of eight expiries,
    reported as converged), so those fits are one of many near-equal ones."""
    ends = [f"T={t:.6g} (beta {b:g})" for t, b in zip(maturity, beta, strict=True)
            if min(b, 1.0 - b) <= 1e-6]  # fmt: skip
    if ends:
        warnings.warn(f"SABR beta ended on a bound of [0, 1] at {', '.join(ends)}: the smile "
                      "does not pin beta down apart from rho and nu; fix it (e.g. --beta 0.5) for "
                      "comparable parameters", stacklevel=4)  # fmt: skip


def _fit_direct(problem: CalibrationProblem) -> FitOutput:
    options = dict(problem.options)
    free = bool(options.pop("free_beta", False))
    beta = None if free else (DEFAULT_BETA if problem.beta is None else float(problem.beta))
    batch = smile_batch(problem.quotes, problem.weights)
    _warn_if_underdetermined(batch, free, problem.bounds)
    params, vols, converged, iterations = fit_smiles(
        batch, beta=beta, bounds=problem.bounds, x0=problem.x0, **options
    )
    model_iv = np.empty(len(problem.quotes))
    for e, rows in enumerate(batch.rows):
        model_iv[rows] = vols[e, : len(rows)].numpy()
    table = {"maturity": batch.maturity[:, 0], "forward": batch.forward[:, 0]}
    table |= dict(zip(("alpha", "beta", "rho", "nu"), params.unbind(-1), strict=True))
    table["shift"] = batch.shift[:, 0]
    if free:
        _warn_if_beta_at_an_end(table["maturity"].tolist(), table["beta"].tolist())
    edges = _direct_at_bounds(batch, beta, problem.bounds, params)
    return FitOutput(
        {k: v.tolist() for k, v in table.items()},
        model_iv,
        bool(converged.all()),
        iterations,
        edges,
    )


def _scipy_box(bounds: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    """The box of :func:`fit_smile_scipy`: the defaults, alpha's own, the caller's bounds."""
    return _BOX | {"alpha": (1e-8, np.inf)} | dict(bounds or {})


def fit_smile_scipy(
    *,
    forward: float,
    strike: np.ndarray,
    maturity: float,
    market_iv: np.ndarray,
    beta: float | None,
    shift: float = 0.0,
    weight: np.ndarray | None = None,
    x0: Sequence[float] | np.ndarray | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    max_iterations: int = 500,
) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """Reference fit of one smile: scipy ``least_squares`` (trf, finite differences) over
    ``ql.sabrVolatility`` (via :func:`pricing.quantlib.sabr_vol`), from a fixed start (or
    ``x0``: alpha, beta, rho, nu, refused outside the box), within ``bounds`` (name -> (lower,
    upper); equal ends fix a parameter) over the default box, for at most ``max_iterations``
    steps (scipy's ``max_nfev``: trf evaluates the smile once per step, and counts none of its
    finite-difference Jacobian's calls).

    Returns:
        ``(alpha, beta, rho, nu)``, model vols, converged, function evaluations.

    Raises:
        ValueError: naming the field: ``strike``, ``market_iv`` and ``weight`` not 1-D of one
            length; forward or strikes not > 0 after the shift; ``maturity`` or a vol not > 0; a
            weight < 0, or all 0; ``beta`` outside [0, 1]; ``bounds`` on no SABR parameter,
            inverted or outside the domain; a start outside the box.

    Examples:
        >>> strikes = np.array([80.0, 90.0, 100.0, 110.0, 120.0])
        >>> vols = lognormal_vol(forward=100.0, strike=strikes, maturity=1.0, alpha=2.0,
        ...                      beta=0.5, rho=-0.3, nu=0.6).numpy()
        >>> params, model_iv, converged, _ = fit_smile_scipy(forward=100.0, strike=strikes,
        ...     maturity=1.0, market_iv=vols, beta=0.5)
        >>> [round(v, 6) for v in params.tolist()], converged
        ([2.0, 0.5, -0.3, 0.6], True)
    """
    from scipy.optimize import least_squares

    from pricing.quantlib import sabr_vol

    check_positive_int("max_iterations", max_iterations)  # 0 failed in scipy, naming max_nfev
    check_real(forward=forward, strike=strike, maturity=maturity, market_iv=market_iv,
               shift=shift, weight=weight)  # fmt: skip
    # copies: torch, which checks them, refuses the negative strides of a reversed array
    strike, market_iv = np.array(strike, dtype=float), np.array(market_iv, dtype=float)
    weight = np.ones(strike.shape) if weight is None else np.array(weight, dtype=float)
    _check_smile(forward + shift, strike + shift, maturity, market_iv, weight)
    if beta is not None and not 0.0 <= float(beta) <= 1.0:  # QuantLib's error said (0, 1)
        raise ValueError(f"beta must be in [0, 1] (None fits it), got {beta!r}")
    check_bounds("sabr", bounds)
    w = np.sqrt(weight)
    log_moneyness = np.log((strike + shift) / (forward + shift))
    atm = _vol_at_the_money(log_moneyness, market_iv, w)
    b0 = FREE_BETA_START if beta is None else beta
    box = _scipy_box(bounds) | ({} if beta is None else {"beta": (beta, beta)})
    lower, upper = (np.array([box[n][i] for n in _NAMES], dtype=float) for i in (0, 1))
    if x0 is not None:  # it was clipped into the box without a word
        if np.shape(x0) != (len(_NAMES),):  # three values failed in zip(), naming no input
            raise ValueError(f"x0: expected (alpha, beta, rho, nu), got {np.size(x0)} values")
        _check_start_beta(x0[1], beta)
        check_start_in_box(dict(zip(_NAMES, x0, strict=True)), box, method="sabr 'quantlib'")
    start = (atm * (forward + shift) ** (1 - b0), b0, 0.0, 0.5) if x0 is None else x0
    start = np.clip(np.asarray(start, dtype=float), lower, upper)
    # equal bounds fix a parameter, as in fit_smiles (scipy refuses lower == upper)
    free = lower < upper

    def full(x: np.ndarray) -> np.ndarray:
        params = start.copy()
        params[free] = x
        return params

    def model(x: np.ndarray) -> np.ndarray:
        a, b, r, n = full(x)
        return sabr_vol(forward=forward, strike=strike, maturity=maturity, alpha=a, beta=b, rho=r,
                        nu=n, shift=shift)  # fmt: skip

    def residual(x: np.ndarray) -> np.ndarray:
        return w * (model(x) - market_iv)

    if not free.any():  # nothing left to fit
        return start, model(start[free]), True, 1
    # max_nfev counts trf's steps (one call each), not the Jacobian's: max_iterations * (p + 1)
    # let max_iterations=1 take 4 steps
    solution = least_squares(residual, start[free], bounds=(lower[free], upper[free]), xtol=1e-12,
                             ftol=1e-12, gtol=1e-12,
                             max_nfev=max_iterations)  # fmt: skip
    params = full(solution.x)
    return params, model(solution.x), solution.status > 0, solution.nfev


def _check_smile(
    forward: float, strike: np.ndarray, maturity: float, market_iv: np.ndarray, weight: np.ndarray
) -> None:
    """Refuse a smile :func:`fit_smile_scipy` cannot fit, naming the field: negative vols were
    fitted (to a smile of zeros, reported converged), a maturity of 0 too, weights all 0 returned
    the start as converged, and a NaN vol, a negative strike or weight, or lengths that differ
    failed in scipy or numpy without naming any input. ``forward`` and ``strike`` are shifted.

    Shape:
        ``strike``, ``market_iv`` and ``weight``: ``(N,)``, N >= 1.
    """
    shapes = (strike.shape, market_iv.shape, weight.shape)
    if strike.ndim != 1 or not strike.size or len(set(shapes)) > 1:
        raise ValueError(f"strike, market_iv and weight must be 1-D of one length >= 1, got "
                         f"shapes {', '.join(map(str, shapes))}")  # fmt: skip
    check_positive(**{"forward + shift": forward, "strike + shift": strike, "maturity": maturity,
                      "market_iv": market_iv})  # fmt: skip
    check_nonnegative(weight=weight)
    if not (weight > 0).any():
        raise ValueError("weight: every quote has weight 0 (nothing to fit)")


def _fit_quantlib(problem: CalibrationProblem) -> FitOutput:
    options = dict(problem.options)
    free = bool(options.pop("free_beta", False))
    max_iterations = int(options.pop("max_iterations", 500))
    beta = None if free else (DEFAULT_BETA if problem.beta is None else float(problem.beta))
    x0 = None
    if problem.x0:
        start = {"beta": FREE_BETA_START if beta is None else beta} | dict(problem.x0)
        x0 = tuple(float(start[n]) for n in _NAMES)
    batch = smile_batch(problem.quotes, problem.weights)
    _warn_if_underdetermined(batch, free, problem.bounds)
    model_iv, table, ok, evaluations = np.empty(len(problem.quotes)), [], True, 0
    for e, rows in enumerate(batch.rows):
        n = len(rows)
        params, vols, converged, nfev = fit_smile_scipy(
            forward=float(batch.forward[e, 0]), strike=batch.strike[e, :n].numpy(),
            maturity=float(batch.maturity[e, 0]), market_iv=batch.market_iv[e, :n].numpy(),
            beta=beta, shift=float(batch.shift[e, 0]),
            weight=problem.weights[rows] / problem.weights[rows].mean(),
            bounds=problem.bounds, x0=x0, max_iterations=max_iterations,
        )  # fmt: skip
        model_iv[rows], ok, evaluations = vols, ok and converged, max(evaluations, nfev)
        table.append(params)
    values = np.array(table)
    params = {"maturity": batch.maturity[:, 0].tolist(), "forward": batch.forward[:, 0].tolist()}
    params |= {name: values[:, i].tolist() for i, name in enumerate(_NAMES)}
    params["shift"] = batch.shift[:, 0].tolist()
    if free:
        _warn_if_beta_at_an_end(params["maturity"], params["beta"])
    box = _scipy_box(problem.bounds) | ({} if beta is None else {"beta": (beta, beta)})
    lower, upper = (np.array([box[n][i] for n in _NAMES], dtype=float) for i in (0, 1))
    return FitOutput(
        params, model_iv, ok, evaluations, bounds_reached(_NAMES, values, lower, upper)
    )


register_method("sabr", "direct", _fit_direct, options=("free_beta", "max_iterations", "n_starts"))
register_method("sabr", "quantlib", _fit_quantlib, options=("free_beta", "max_iterations"))
