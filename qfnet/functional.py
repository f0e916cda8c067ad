"""Losses, risk measures and metrics as plain functions of tensors.

Conventions: a *P&L* is a gain (positive is good); a *risk measure* maps a P&L sample to a loss
(smaller is better) and is evaluated on the empirical distribution of the sample. Risk measures
raise on a NaN/inf P&L, naming the measure and the path (``check_finite=False`` skips that host
sync). Thin :class:`torch.nn.Module` wrappers live in :mod:`qfnet.losses`.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "entropic_risk",
    "expected_shortfall",
    "expected_shortfall_ru",
    "hedge_pnl",
    "indifference_price",
    "iv_error_bp",
    "mean_variance",
    "pnl_variance",
    "trades",
    "transaction_costs",
    "turnover",
    "value_at_risk",
]


def _as_instruments(x: torch.Tensor, name: str) -> torch.Tensor:
    """Add a trailing instrument axis to (N, T) tensors; check the tensor is 2-D or 3-D."""
    if x.dim() == 2:
        return x.unsqueeze(-1)
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (N, T) or (N, T, H), got {tuple(x.shape)}")
    return x


def trades(positions: torch.Tensor, *, liquidate: bool = True) -> torch.Tensor:
    """Trades implied by a sequence of positions, starting flat.

    The trade at step 0 is the initial purchase ``positions[:, 0]``; the trade at step ``t`` is
    ``positions[:, t] - positions[:, t - 1]``; with ``liquidate`` a final trade
    ``-positions[:, -1]`` closes the book at maturity (zero otherwise).

    Args:
        positions: holdings decided at steps ``0..T-1`` and held over ``[t_i, t_{i+1}]``.
        liquidate: whether the final position is sold at maturity.

    Shape:
        - positions: (N, T) or (N, T, H)
        - output: (N, T + 1) or (N, T + 1, H)

    Examples:
        >>> trades(torch.tensor([[0.5, 0.7]]))
        tensor([[ 0.5000,  0.2000, -0.7000]])
    """
    squeeze = positions.dim() == 2
    h = _as_instruments(positions, "positions")
    last = -h[:, -1:] if liquidate else torch.zeros_like(h[:, -1:])
    out = torch.cat([h[:, :1], h[:, 1:] - h[:, :-1], last], dim=1)  # (N, T+1, H)
    return out.squeeze(-1) if squeeze else out


def turnover(positions: torch.Tensor, *, liquidate: bool = True) -> torch.Tensor:
    """Total absolute number of units traded per path (all instruments summed).

    Shape:
        - positions: (N, T) or (N, T, H)
        - output: (N,)

    Examples:
        >>> turnover(torch.tensor([[0.5, 0.7]]))
        tensor([1.4000])
    """
    tr = _as_instruments(trades(positions, liquidate=liquidate), "positions")
    return tr.abs().sum(dim=(1, 2))


def transaction_costs(
    positions: torch.Tensor,
    prices: torch.Tensor,
    *,
    cost: float | torch.Tensor,
    liquidate: bool = True,
) -> torch.Tensor:
    """Proportional transaction costs ``sum_t cost * |trade_t| * price_t`` per path.

    Every trade pays, including the initial one from a flat book and, with ``liquidate``, the final
    liquidation at maturity.

    Args:
        positions: holdings decided at steps ``0..T-1``.
        prices: instrument prices at steps ``0..T`` (discounted, for discounted P&L).
        cost: proportional cost rate, a float or one rate per instrument.
        liquidate: whether the final position is sold (and pays costs) at maturity.

    Shape:
        - positions: (N, T) or (N, T, H)
        - prices: (N, T + 1) or (N, T + 1, H)
        - cost: () or (H,)
        - output: (N,)

    Examples:
        >>> transaction_costs(torch.tensor([[1.0]]), torch.tensor([[2.0, 3.0]]), cost=0.01)
        tensor([0.0500])
    """
    h, p = _check_positions_prices(positions, prices)
    rate = torch.as_tensor(cost, dtype=p.dtype, device=p.device)
    # (2,) rates for one instrument broadcast into two charges; a negative rate paid to trade
    if rate.shape not in ((), (p.shape[-1],)):
        raise ValueError(f"cost must be one rate or one per instrument (H = {p.shape[-1]}), "
                         f"got shape {tuple(rate.shape)}")  # fmt: skip
    # the values are checked on the CPU only: on a GPU the check would synchronise every
    # training step (the hedging models validate their costs once, from the config)
    if rate.device.type == "cpu" and not bool((torch.isfinite(rate) & (rate >= 0)).all()):
        raise ValueError(f"cost must be finite and >= 0, got {rate.tolist()}")
    tr = trades(h, liquidate=liquidate)  # (N, T+1, H)
    return (tr.abs() * p * rate).sum(dim=(1, 2))


def _check_positions_prices(
    positions: torch.Tensor, prices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    h = _as_instruments(positions, "positions")
    p = _as_instruments(prices, "prices")
    n, t, k = h.shape
    if p.shape != (n, t + 1, k):
        raise ValueError(
            f"prices must have shape (N, T+1, H) = {(n, t + 1, k)} to match positions "
            f"{tuple(h.shape)}, got {tuple(p.shape)}"
        )
    return h, p


def hedge_pnl(
    positions: torch.Tensor,
    prices: torch.Tensor,
    payoff: torch.Tensor,
    *,
    cost: float | torch.Tensor = 0.0,
    premium: float | torch.Tensor = 0.0,
    liquidate: bool = True,
    income: torch.Tensor | None = None,
) -> torch.Tensor:
    """Terminal P&L of a short derivative hedged with self-financing trades and proportional costs.

    ``pnl = premium + sum_t h_t . (P_{t+1} - P_t + income_t) - costs - payoff`` where prices,
    payoff and premium are all in discounted units (so the sum of gains is in time-0 money).

    Args:
        positions: holdings ``h_t`` decided at steps ``0..T-1`` (H instruments).
        prices: discounted instrument prices ``P_t`` at steps ``0..T``.
        payoff: discounted payoff owed at maturity (the hedger is short the derivative).
        cost: proportional cost rate on every trade (a float or one per instrument).
        premium: premium received at time 0.
        liquidate: whether the final position is sold (and pays costs) at maturity.
        income: optional discounted carry per unit held over each step (e.g. dividends).

    Shape:
        - positions: (N, T) or (N, T, H)
        - prices: (N, T + 1) or (N, T + 1, H)
        - payoff: (N,)
        - premium: () or (N,)
        - cost: () or (H,)
        - income: like positions
        - output: (N,)

    References:
        Buehler, Gonon, Teichmann, Wood (2019), "Deep hedging", Quantitative Finance 19(8), eq. (2.1).

    Examples:
        >>> h = torch.tensor([[0.5, 1.0]])
        >>> p = torch.tensor([[1.0, 1.1, 1.2]])
        >>> hedge_pnl(h, p, torch.tensor([0.2]), cost=0.0)
        tensor([-0.0500])
    """
    h, p = _check_positions_prices(positions, prices)
    if payoff.shape != (h.shape[0],):
        raise ValueError(
            f"payoff must have shape (N,) = ({h.shape[0]},), got {tuple(payoff.shape)}"
        )
    if torch.as_tensor(premium).shape not in ((), (h.shape[0],)):  # (N, 1) made (N, N)
        raise ValueError(f"premium must be a number or have shape (N,) = ({h.shape[0]},), "
                         f"got {tuple(torch.as_tensor(premium).shape)}")  # fmt: skip
    increments = p[:, 1:] - p[:, :-1]  # (N, T, H)
    if income is not None:
        carry = _as_instruments(income, "income")
        if carry.shape != h.shape:  # (N, T) broadcast to every instrument, (K, T, H) to K paths
            raise ValueError(f"income must have the shape of positions {tuple(positions.shape)}, "
                             f"got {tuple(income.shape)}")  # fmt: skip
        increments = increments + carry
    gains = (h * increments).sum(dim=(1, 2))
    costs = transaction_costs(h, p, cost=cost, liquidate=liquidate)
    return premium + gains - costs - payoff


def value_at_risk(
    pnl: torch.Tensor, alpha: float = 0.95, *, check_finite: bool = True
) -> torch.Tensor:
    """Empirical value at risk: the ``alpha``-quantile of the loss ``-pnl``, linearly
    interpolated between order statistics (as :func:`torch.quantile`, without its limit of
    ``2**24`` paths).

    Args:
        pnl: P&L per path.
        alpha: confidence level in (0, 1).
        check_finite: raise on a NaN/inf P&L (one host sync on a GPU).

    Shape:
        - pnl: (N,)
        - output: ()

    Examples:
        >>> value_at_risk(torch.arange(100.0) - 50.0, alpha=0.9)
        tensor(40.1000)
    """
    _check_alpha(alpha)
    _check_pnl(pnl, "value_at_risk", check_finite)
    return _quantile(-pnl, alpha)


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) of a 1-D tensor of any length: the two
    order statistics around rank ``q (n - 1)`` of the sorted values."""
    rank = q * (x.numel() - 1)
    below = math.floor(rank)
    # sorted (as torch.quantile does), not by kthvalue: its CPU quickselect is quadratic on a
    # descending input, the loss of a P&L sorted ascending (VaR of 400,000 such paths: 4.3 s
    # for 0.03 s, and 8.4 million never ended)
    ordered = torch.sort(x).values
    return torch.lerp(ordered[below], ordered[min(below + 1, x.numel() - 1)], rank - below)


def expected_shortfall(
    pnl: torch.Tensor, alpha: float = 0.95, *, check_finite: bool = True
) -> torch.Tensor:
    """Empirical expected shortfall: the mean loss over the worst ``1 - alpha`` fraction of paths.

    Uses the exact sample formula ``min_w w + E[(-pnl - w)^+] / (1 - alpha)`` evaluated at its
    minimiser (the ``alpha``-quantile), which averages the ``ceil(N (1 - alpha))`` worst losses
    with a fractional weight on the boundary one.

    Args:
        pnl: P&L per path.
        alpha: confidence level in (0, 1).
        check_finite: raise on a NaN/inf P&L (one host sync on a GPU).

    Shape:
        - pnl: (N,)
        - output: ()

    References:
        Acerbi, Tasche (2002), "On the coherence of expected shortfall", J. Banking & Finance 26,
        eq. (3.3).

    Examples:
        >>> expected_shortfall(torch.arange(100.0), alpha=0.95)
        tensor(-2.)
    """
    _check_alpha(alpha)
    _check_pnl(pnl, "expected_shortfall", check_finite)
    loss = -pnl
    n = loss.numel()
    tail = n * (1.0 - alpha)
    k = max(1, math.ceil(tail - 1e-9))
    worst = torch.topk(loss, k).values  # descending
    weights = torch.ones(k, dtype=loss.dtype, device=loss.device)
    weights[-1] = tail - (k - 1)
    return (worst * weights).sum() / tail


def expected_shortfall_ru(
    pnl: torch.Tensor,
    var_level: torch.Tensor | float,
    alpha: float = 0.95,
    *,
    check_finite: bool = True,
) -> torch.Tensor:
    """Rockafellar-Uryasev objective ``w + E[(-pnl - w)^+] / (1 - alpha)``.

    Minimised over ``w`` it equals the expected shortfall, and the minimiser is the VaR; jointly
    minimising over ``w`` and a hedge gives the ES-optimal hedge.

    Args:
        pnl: P&L per path.
        var_level: the level ``w``.
        alpha: confidence level in (0, 1).
        check_finite: raise on a NaN/inf P&L (one host sync on a GPU).

    Shape:
        - pnl: (N,)
        - var_level: ()
        - output: ()

    References:
        Rockafellar, Uryasev (2000), "Optimization of conditional value-at-risk", J. Risk 2(3),
        Theorem 1, eq. (4).

    Examples:
        >>> expected_shortfall_ru(torch.arange(100.0), torch.tensor(-4.0), alpha=0.95)
        tensor(-2.)
    """
    _check_alpha(alpha)
    _check_pnl(pnl, "expected_shortfall_ru", check_finite)
    w = torch.as_tensor(var_level, dtype=pnl.dtype, device=pnl.device)
    if w.dim():  # a (1,) or (N,) level broadcast into a loss per path, not one number
        raise ValueError(f"expected_shortfall_ru: var_level must be one number (shape ()), got "
                         f"shape {tuple(w.shape)}")  # fmt: skip
    return w + torch.relu(-pnl - w).mean() / (1.0 - alpha)


def entropic_risk(
    pnl: torch.Tensor,
    risk_aversion: float = 1.0,
    *,
    notional: float = 1.0,
    check_finite: bool = True,
) -> torch.Tensor:
    """Entropic risk ``(1/g) log E[exp(-g pnl)]`` with ``g = risk_aversion / notional``.

    Stating the risk aversion per unit of notional keeps the measure positively homogeneous in the
    position size: doubling notional and P&L doubles the risk. Computed as ``m + log E[exp(x - m)]``
    with ``x = -g pnl`` and ``m = max x`` (log-sum-exp: no overflow for large ``g |pnl|``), and the
    logarithm as ``log1p(E[expm1(x - m)])`` when that mean is near 0, so a small ``g |pnl|`` keeps
    its digits in float32.

    Args:
        pnl: P&L per path.
        risk_aversion: risk aversion per unit of notional, finite and > 0.
        notional: notional of the position, finite and > 0.
        check_finite: raise on a NaN/inf P&L (one host sync on a GPU).

    Shape:
        - pnl: (N,)
        - output: ()

    References:
        Follmer, Schied (2016), "Stochastic Finance", 4th ed., Example 4.34.

    Examples:
        >>> entropic_risk(torch.zeros(3) + 2.0, 5.0)
        tensor(-2.)
    """
    g = _check_risk_aversion(risk_aversion, notional)
    _check_pnl(pnl, "entropic_risk", check_finite)
    loss = -pnl
    top = loss.max().detach()  # the shift only: the gradient is the softmax of x either way
    # g (loss - top), not -g pnl - g top: g |pnl| past the dtype's range (g = 1e308 on a loss
    # of 2, or 3e38 in float32) was inf - inf, a NaN risk; the risk is near top there. A g
    # itself past it (1e39 on a float32 P&L) was inf: inf * 0 on the top path, a NaN risk; the
    # dtype's largest value gives the worst loss to the dtype's precision
    g = min(g, torch.finfo(pnl.dtype).max)
    shifted = g * (loss - top)  # x - m <= 0: no overflow (-inf: a path of no weight)
    excess = torch.expm1(shifted).mean()  # E[exp(x - m)] - 1, in (-1, 0]
    # logsumexp(x) - log(N) lost ~eps log(N) / g: 0.0 for a float32 risk of 8e-6 at g = 0.1;
    # log1p keeps a small excess exactly, log(E[exp]) a large one (its clamp: no inf gradient)
    log_mean = torch.where(
        excess > -0.5, torch.log1p(excess.clamp(min=-0.5)), torch.exp(shifted).mean().log()
    )
    return top + log_mean / g


def indifference_price(
    pnl: torch.Tensor,
    risk_aversion: float = 1.0,
    *,
    notional: float = 1.0,
    check_finite: bool = True,
) -> torch.Tensor:
    """Seller's exponential-utility indifference price given the hedged P&L without premium.

    The premium ``p`` solving ``E[-exp(-g (pnl + p))] = -1`` is ``p = (1/g) log E[exp(-g pnl)]``,
    the entropic certainty equivalent of the hedged short position; it increases with ``g``.

    Shape:
        - pnl: (N,)
        - output: ()

    References:
        Buehler, Gonon, Teichmann, Wood (2019), "Deep hedging", Quantitative Finance 19(8), Sec. 4.

    Examples:
        >>> float(indifference_price(torch.tensor([-1.0, 1.0]), 1e-8))  # risk-neutral limit: -mean
        0.0
    """
    return entropic_risk(pnl, risk_aversion, notional=notional, check_finite=check_finite)


def pnl_variance(pnl: torch.Tensor, *, check_finite: bool = True) -> torch.Tensor:
    """Sample variance of the P&L (population normalisation).

    Args:
        pnl: P&L per path.
        check_finite: raise on a NaN/inf P&L (one host sync on a GPU).

    Shape:
        - pnl: (N,)
        - output: ()

    Examples:
        >>> pnl_variance(torch.tensor([1.0, 3.0]))
        tensor(1.)
    """
    _check_pnl(pnl, "pnl_variance", check_finite)
    return pnl.var(unbiased=False)


def mean_variance(
    pnl: torch.Tensor, risk_aversion: float = 1.0, *, check_finite: bool = True
) -> torch.Tensor:
    """Mean-variance loss ``-E[pnl] + (risk_aversion / 2) Var[pnl]``.

    Args:
        pnl: P&L per path.
        risk_aversion: weight of the variance, finite and >= 0.
        check_finite: raise on a NaN/inf P&L (one host sync on a GPU).

    Shape:
        - pnl: (N,)
        - output: ()

    References:
        Markowitz (1952), "Portfolio selection", J. Finance 7(1).

    Examples:
        >>> mean_variance(torch.tensor([1.0, 3.0]), 2.0)
        tensor(-1.)
    """
    if not (math.isfinite(risk_aversion) and risk_aversion >= 0.0):  # inf made an inf loss
        raise ValueError(f"risk_aversion must be finite and >= 0, got {risk_aversion}")
    variance = pnl_variance(pnl, check_finite=check_finite)
    return -pnl.mean() + 0.5 * risk_aversion * variance


def iv_error_bp(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute implied-volatility error in basis points (1 bp = 0.0001 of vol).

    Shape:
        - predicted, target: (N,)
        - output: (N,)

    Examples:
        >>> iv_error_bp(torch.tensor([0.2010]), torch.tensor([0.2000])).round()
        tensor([10.])
    """
    if predicted.shape != target.shape:  # (N, 1) against (N,) broadcast to (N, N)
        raise ValueError(f"predicted and target must have one shape, got "
                         f"{tuple(predicted.shape)} and {tuple(target.shape)}")  # fmt: skip
    return (predicted - target).abs() * 1e4


def _check_pnl(pnl: torch.Tensor, measure: str, check_finite: bool) -> None:
    """Risk measures take one P&L per path, (N,) with N >= 1: an (N, K) P&L was flattened into
    one sample, an empty one failed inside topk. A NaN P&L made a NaN risk and an inf one a
    silently finite one (an entropic risk or ES that dropped the path)."""
    if pnl.dim() != 1 or pnl.numel() == 0:
        raise ValueError(f"pnl must have shape (N,) with N >= 1, got {tuple(pnl.shape)}")
    if not pnl.is_floating_point():  # an integer ES truncated its fractional weights (0 for -1)
        raise ValueError(f"{measure}: pnl must be a floating-point tensor, got {pnl.dtype}")
    if check_finite and not bool(torch.isfinite(pnl).all()):  # a host sync on a GPU
        bad = torch.nonzero(~torch.isfinite(pnl)).flatten()
        first = int(bad[0])
        raise ValueError(
            f"{measure}: pnl has {bad.numel()} non-finite value(s), the first on path "
            f"{first} ({pnl[first].item()})"
        )


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _check_risk_aversion(risk_aversion: float, notional: float) -> float:
    """``g = risk_aversion / notional``; an infinite or zero ``g`` made a NaN risk."""
    if not (math.isfinite(risk_aversion) and risk_aversion > 0.0):
        raise ValueError(f"risk_aversion must be finite and > 0, got {risk_aversion}")
    if not (math.isfinite(notional) and notional > 0.0):
        raise ValueError(f"notional must be finite and > 0, got {notional}")
    g = risk_aversion / notional
    if not (math.isfinite(g) and g > 0.0):
        raise ValueError(
            f"risk_aversion / notional must be finite and > 0, got {risk_aversion} / {notional}"
        )
    return g
