"""Path-dependent reference deltas: they hedge their own derivative, which the European delta
does not; knocked paths hold the right position; bad input is named."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.integrate import quad
from scipy.stats import norm

from pricing import black_scholes
from pricing.analytic_lookback import lookback_price
from pricing.quantlib import bs_asian_tw_price
from pricing.simulate import gbm
from qfnet.hedging.config import DerivativeConfig, config_from_dict
from qfnet.hedging.deltas import (
    _PRICERS,
    PathGreeks,
    path_dependent_delta,
    path_dependent_greeks,
)
from qfnet.hedging.markets import Market
from qfnet.hedging.pnl import run_strategy
from qfnet.hedging.strategies import BlackScholesDelta, NoHedge, WhalleyWilmott
from qfnet.hedging.train import make_paths

MARKET = {"n_steps": 50, "volatility": 0.2, "maturity": 0.5, "cost": 0.0, "rate": 0.02}


@pytest.mark.parametrize(
    ("derivative", "ratio"),
    [
        ({"type": "asian"}, 0.15),
        ({"type": "lookback"}, 0.5),
        ({"type": "lookback", "is_call": False}, 0.5),
        ({"type": "barrier", "barrier": 1.15, "barrier_type": "up_out"}, 0.25),
        ({"type": "barrier", "barrier": 0.9, "barrier_type": "down_in", "is_call": False}, 0.8),
        ({"type": "barrier", "barrier": 0.9, "barrier_type": "down_out"}, 0.5),
        ({"type": "barrier", "barrier": 1.1, "barrier_type": "up_in"}, 0.8),
    ],
    ids=["asian", "lookback-call", "lookback-put", "up-out", "down-in-put", "down-out", "up-in"],
)
def test_the_path_dependent_delta_hedges_its_derivative(derivative: dict, ratio: float) -> None:
    # 50 rebalancings without costs: the P&L spread left by the derivative's own delta against
    # the European delta's (on 20k paths: asian 0.08x, lookbacks 0.4x, up-out 0.14x, down-out 0.3x,
    # knock-ins 0.6x; `ratio` leaves room for the sampling error of both spreads)
    market = Market(config_from_dict({"market": MARKET, "derivative": derivative}))
    data, _ = make_paths(market, 8192, split="test", seed=0)
    own = run_strategy(BlackScholesDelta(), data, market).pnl
    tau = (market.time_grid[-1] - market.time_grid[:-1]).expand(data.spot.shape[0], -1)
    european = black_scholes.greeks(spot=data.spot[:, :-1], strike=1.0, maturity=tau,
                                    volatility=data.vol, rate=0.02,
                                    is_call=derivative.get("is_call", True)).delta  # fmt: skip
    other = run_strategy(BlackScholesDelta(), data._replace(reference=european.unsqueeze(-1)),
                         market).pnl  # fmt: skip
    unhedged = run_strategy(NoHedge(), data, market).pnl
    assert own.std() < ratio * other.std()
    assert own.std() < 0.5 * unhedged.std()


@pytest.mark.parametrize("barrier_type", ["up_in", "down_in"])
def test_float32_knock_in_greeks_are_finite_far_from_the_strike_at_low_volatility(
    barrier_type: str,
) -> None:
    # Regression: the vanilla price a knock-in holds once hit is computed on every path; on the
    # paths not hit, far from the strike at 0.2% vol over days, its normalised price underflowed
    # with NaN gradients, which torch.where passed on to delta, gamma and vega (10 of 40 NaN).
    grid = torch.linspace(0.0, 20 / 365, 21)  # daily steps, float32
    spot = torch.tensor([[1.0] + [0.3] * 20, [1.0] + [1.3] * 20])  # one path each side
    vol = torch.full((2, 20), 0.002)
    level = 1.2 if barrier_type == "up_in" else 0.4
    derivative = DerivativeConfig(type="barrier", barrier=level, barrier_type=barrier_type)
    single = path_dependent_greeks(derivative, spot, grid, vol, rate=0.0, dividend=0.0)
    double = path_dependent_greeks(derivative, spot.double(), grid.double(), vol.double(),
                                   rate=0.0, dividend=0.0)  # fmt: skip
    for ours, reference in zip(single, double, strict=True):
        assert bool(torch.isfinite(ours).all())
        torch.testing.assert_close(ours.double(), reference, rtol=1e-5, atol=1e-6)


def test_knocked_paths_hold_nothing_or_the_vanilla_delta() -> None:
    grid = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    spot = torch.tensor([[1.0, 1.2, 1.0, 1.0, 1.0], [1.0, 1.05, 1.0, 1.0, 1.0]],
                        dtype=torch.float64)  # fmt: skip
    vol = torch.full((2, 4), 0.2, dtype=torch.float64)
    out = path_dependent_delta(DerivativeConfig(type="barrier", barrier=1.1, barrier_type="up_out"),
                               spot, grid, vol, rate=0.0, dividend=0.0)  # fmt: skip
    assert bool((out[0, 1:] == 0).all()) and bool((out[1] != 0).all())  # hit at t_1
    knock_in = path_dependent_delta(
        DerivativeConfig(type="barrier", barrier=1.1, barrier_type="up_in"), spot, grid, vol,
        rate=0.0, dividend=0.0,
    )  # fmt: skip
    vanilla = black_scholes.greeks(spot=spot[0, 1:-1], strike=1.0, maturity=1.0 - grid[1:-1],
                                   volatility=0.2).delta  # fmt: skip
    torch.testing.assert_close(knock_in[0, 1:], vanilla, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(knock_in[1] + out[1], black_scholes.greeks(
        spot=spot[1, :-1], strike=1.0, maturity=1.0 - grid[:-1], volatility=0.2).delta,
        rtol=1e-9, atol=1e-12)  # in + out = vanilla while alive (same shifted barrier)  # fmt: skip


def _expiry_only_value(spot, *, strike, barrier, barrier_type, is_call, tau, vol, rate, dividend):
    """The barrier option not hit so far whose only date left is the expiry, by quadrature of
    its payoff against the lognormal density (the slow, obviously correct reference)."""
    drift, scale = (rate - dividend - 0.5 * vol**2) * tau, vol * math.sqrt(tau)

    def integrand(z: float) -> float:
        end = spot * math.exp(drift + scale * z)
        hit = end >= barrier if barrier_type.startswith("up") else end <= barrier
        paid = hit if barrier_type.endswith("in") else not hit
        payoff = max(end - strike, 0.0) if is_call else max(strike - end, 0.0)
        return paid * payoff * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    kinks = sorted((math.log(x / spot) - drift) / scale for x in (strike, barrier))
    value = sum(quad(integrand, lo, hi, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
                for lo, hi in itertools.pairwise([-12.0, *kinks, 12.0]))  # fmt: skip
    return math.exp(-rate * tau) * value


@pytest.mark.parametrize("n_steps", [1, 4])
@pytest.mark.parametrize(
    ("barrier_type", "barrier", "strike", "is_call"),
    [
        ("up_out", 1.1, 1.0, True),
        ("up_out", 1.05, 1.1, False),
        ("down_out", 0.9, 1.0, False),
        ("down_out", 0.97, 0.95, True),
        ("up_in", 1.1, 1.0, True),
        ("down_in", 0.9, 1.0, False),
    ],
)
def test_barrier_delta_at_the_last_step_is_that_of_its_one_date_left(
    n_steps: int, barrier_type: str, barrier: float, strike: float, is_call: bool
) -> None:
    # with the expiry its only monitoring date left (the one step of a one-step grid), Broadie,
    # Glasserman and Kou's shift, an expansion in the number of dates, set a delta 0.132 for
    # 0.0955 (up-and-out call, 3 months at 20% vol, no rates), and one 0.1 off for the put struck beyond
    # its barrier
    rate, dividend, vol = 0.03, 0.01, 0.2
    grid = torch.linspace(0.0, 0.25, n_steps + 1, dtype=torch.float64)
    last = [0.98, 1.0, 1.03]
    spot = torch.tensor([[1.0] * n_steps + [1.0]] * 3, dtype=torch.float64)
    spot[:, n_steps - 1] = torch.tensor(last, dtype=torch.float64)  # alive, near the barrier
    derivative = DerivativeConfig(type="barrier", strike=strike, barrier=barrier,
                                  barrier_type=barrier_type, is_call=is_call)  # fmt: skip
    ours = path_dependent_delta(derivative, spot, grid, torch.full((3, n_steps), vol,
                                dtype=torch.float64), rate=rate, dividend=dividend)[:, -1]  # fmt: skip
    tau, h = float(grid[-1] - grid[-2]), 1e-5
    args = dict(strike=strike, barrier=barrier, barrier_type=barrier_type, is_call=is_call,
                tau=tau, vol=vol, rate=rate, dividend=dividend)  # fmt: skip
    reference = [(_expiry_only_value(s + h, **args) - _expiry_only_value(s - h, **args)) / (2 * h)
                 for s in last]  # fmt: skip
    torch.testing.assert_close(ours, torch.tensor(reference, dtype=torch.float64),
                               rtol=0, atol=1e-6)  # fmt: skip


def _last_step_greeks(kind, is_call, last, n_steps, vol, rate, dividend):
    """Greeks of ``kind`` on paths at 1 until step T-1, where they are at ``last`` (P,), on a
    grid of 0.5 years, and the closed-form Black-Scholes delta and gamma of a European claim
    over the last step: ``european(spot, strike)`` -> ``(delta, gamma)``, strike > 0."""
    grid = torch.linspace(0.0, 0.5, n_steps + 1, dtype=torch.float64)
    spot = torch.ones(len(last), n_steps + 1, dtype=torch.float64)
    spot[:, n_steps - 1] = torch.tensor(last, dtype=torch.float64)
    derivative = DerivativeConfig(type=kind, is_call=is_call)
    g = path_dependent_greeks(derivative, spot, grid, torch.full((len(last), n_steps), vol,
                              dtype=torch.float64), rate=rate, dividend=dividend)  # fmt: skip
    tau = float(grid[-1] - grid[-2])
    carry, scale = math.exp(-dividend * tau), vol * math.sqrt(tau)

    def european(s: float, strike: float) -> tuple[float, float]:
        d1 = (math.log(s / strike) + (rate - dividend + 0.5 * vol**2) * tau) / scale
        return carry * (norm.cdf(d1) - (not is_call)), carry * norm.pdf(d1) / (s * scale)

    return spot, g, carry, european


def _assert_last_step(g: PathGreeks, delta: list[float], gamma: list[float]) -> None:
    torch.testing.assert_close(g.delta[:, -1], torch.tensor(delta, dtype=torch.float64),
                               rtol=0, atol=1e-12)  # fmt: skip
    torch.testing.assert_close(g.gamma[:, -1], torch.tensor(gamma, dtype=torch.float64),
                               rtol=1e-9, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("n_steps", [1, 4])
@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_asian_greeks_at_the_last_step_are_those_of_its_european_claim(
    n_steps: int, is_call: bool
) -> None:
    # with S_T its only fixing left, (past + S_T) / n - K is (S_T - K') / n, K' = n K - past: 1/n
    # of the European struck at K', or of a forward where K' <= 0 (the put worthless). Levy's
    # continuous average over the last step set a delta up to 0.035 off on 4 steps (0.15 on one)
    n = n_steps
    last = [0.9, 0.97, 1.0, 1.03, 1.1] + ([2.5] if n > 1 else [])  # 2.5: K' <= 0
    spot, g, carry, european = _last_step_greeks("asian", is_call, last, n, 0.2, 0.03, 0.01)
    delta, gamma = [], []
    for s, past in zip(last, spot[:, 1:n].sum(dim=1).tolist(), strict=True):
        strike = n * 1.0 - past
        if strike <= 0:
            delta.append(carry / n if is_call else 0.0)
            gamma.append(0.0)
            continue
        d, gm = european(s, strike)
        delta.append(d / n)
        gamma.append(gm / n)
    assert n == 1 or n - float(spot[-1, 1:n].sum()) < 0  # the last path's K' is below 0
    _assert_last_step(g, delta, gamma)


@pytest.mark.parametrize(
    ("n_steps", "rate", "dividend", "vol", "is_call"),
    [(20, 0.1, 0.0, 0.02, True), (4, 0.1, 0.0, 0.05, True), (2, 0.0, 0.06, 0.05, False),
     (20, 0.02, 0.0, 0.2, True), (1, 0.02, 0.0, 0.2, False)],
)  # fmt: skip
def test_lookback_greeks_at_the_last_step_are_those_of_the_european_struck_at_the_extremum(
    n_steps: int, rate: float, dividend: float, vol: float, is_call: bool
) -> None:
    # with the expiry its only date left, S_T - min(m, S_T) is (S_T - m)^+ (the put's likewise):
    # Broadie, Glasserman and Kou's shift went above it where the carry outweighs the
    # volatility, a call's delta 0.684 for 0.786 at 2% vol and a 10% rate on 20 steps
    last = [0.9, 0.97, 1.0, 1.03, 1.1]
    spot, g, _, european = _last_step_greeks("lookback", is_call, last, n_steps, vol, rate,
                                             dividend)  # fmt: skip
    past = spot[:, :-1]
    extremum = (past.amin(1) if is_call else past.amax(1)).tolist()
    delta, gamma = zip(*(european(s, m) for s, m in zip(last, extremum, strict=True)), strict=True)
    _assert_last_step(g, list(delta), list(gamma))


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_lookback_deltas_on_a_float32_grid_match_float64(is_call: bool) -> None:
    # a float32 grid's last tau (0.00396824) fell below its interval (0.00396825) by rounding:
    # discrete_lookback_price refused the whole hedge ("maturity must be >= interval")
    grid64 = torch.linspace(0.0, 1.0, 253, dtype=torch.float64)
    spot = gbm(16, 252, spot=1.0, volatility=0.2, maturity=1.0,
               generator=torch.Generator().manual_seed(5))  # fmt: skip
    vol = torch.full((16, 252), 0.2, dtype=torch.float64)
    config = DerivativeConfig(type="lookback", is_call=is_call)
    delta = path_dependent_delta(config, spot.float(), grid64.float(), vol.float(), rate=0.02,
                                 dividend=0.0)  # fmt: skip
    expected = path_dependent_delta(config, spot, grid64, vol, rate=0.02, dividend=0.0)
    assert delta.dtype == torch.float32
    torch.testing.assert_close(delta.double(), expected, rtol=1e-4, atol=1e-4)


def test_shapes_and_types_are_checked() -> None:
    grid = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    spot = torch.ones(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="derivative type 'european'"):
        path_dependent_delta(DerivativeConfig(), spot, grid, torch.ones(2, 4), rate=0.0,
                             dividend=0.0)  # fmt: skip
    with pytest.raises(ValueError, match=r"vol \(2, 3\)"):
        path_dependent_delta(DerivativeConfig(type="asian"), spot, grid, torch.ones(2, 3),
                             rate=0.0, dividend=0.0)  # fmt: skip


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_lookback_delta_prices_the_extremum_of_the_hedging_dates(is_call: bool) -> None:
    # the payoff's extremum is taken on the 20 hedging dates: the Broadie-Glasserman-Kou delta
    # leaves a P&L spread about 0.7x that of the continuously monitored formula's delta (3 seeds
    # of 20k paths: 0.70-0.71 for calls, 0.65-0.66 for puts)
    config = {"market": {**MARKET, "n_steps": 20},
              "derivative": {"type": "lookback", "is_call": is_call}}  # fmt: skip
    market = Market(config_from_dict(config))
    data, _ = make_paths(market, 8192, split="test", seed=1)
    own = run_strategy(BlackScholesDelta(), data, market).pnl
    past, grid = data.spot[:, :-1], market.time_grid
    extremum = torch.cummin(past, 1).values if is_call else torch.cummax(past, 1).values
    now = past.clone().requires_grad_(True)
    value = lookback_price(spot=now, running_extremum=extremum, maturity=grid[-1] - grid[:-1],
                           volatility=data.vol, rate=0.02, kind="floating", is_call=is_call)  # fmt: skip
    (continuous,) = torch.autograd.grad(value.sum(), now)
    other = run_strategy(BlackScholesDelta(), data._replace(reference=continuous.unsqueeze(-1)),
                         market).pnl  # fmt: skip
    assert own.std() < 0.8 * other.std()


@pytest.mark.parametrize(
    "derivative",
    [
        {"type": "asian"},
        {"type": "lookback", "is_call": False},
        {"type": "barrier", "barrier": 1.1, "barrier_type": "up_out"},
    ],
    ids=["asian", "lookback-put", "up-out"],
)
def test_path_dependent_gamma_and_vega_are_derivatives_of_the_delta_and_price(
    derivative: dict,
) -> None:
    config = DerivativeConfig(**derivative)
    grid = torch.linspace(0.0, 0.5, 11, dtype=torch.float64)
    spot = gbm(64, 10, spot=1.0, volatility=0.2, maturity=0.5,
               generator=torch.Generator().manual_seed(3))  # fmt: skip
    vol = torch.full((64, 10), 0.2, dtype=torch.float64)
    g = path_dependent_greeks(config, spot, grid, vol, rate=0.02, dividend=0.0)
    torch.testing.assert_close(g.delta, path_dependent_delta(config, spot, grid, vol, rate=0.02,
                                                             dividend=0.0), rtol=0, atol=0)  # fmt: skip
    # second and first central differences of the closed form in today's spot and in the vol,
    # with the path's state (fixings, extremum, barrier status) held as autograd holds it
    price, now, h = _PRICERS[config.type], spot[:, :-1], 1e-4
    at = lambda s, v: price(config, s, spot, grid, v, 0.02, 0.0)  # noqa: E731
    fd_gamma = (at(now * (1 + h), vol) - 2 * at(now, vol) + at(now * (1 - h), vol)) / (h * now) ** 2
    torch.testing.assert_close(g.gamma, fd_gamma, rtol=1e-4, atol=1e-4)
    fd_vega = (at(now, vol + h) - at(now, vol - h)) / (2 * h)
    torch.testing.assert_close(g.vega, fd_vega, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "derivative",
    [{"type": "asian"}, {"type": "lookback"}, {"type": "barrier", "barrier": 0.9,
                                               "barrier_type": "down_in"}],
    ids=["asian", "lookback", "down-in"],
)  # fmt: skip
def test_path_dependent_greeks_inside_inference_mode_equal_those_outside_it(
    derivative: dict,
) -> None:
    # under torch.inference_mode both raised "element 0 of tensors does not require grad";
    # the paths, grid and vols are made there too (inference tensors)
    config = DerivativeConfig(**derivative)

    def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        spot = gbm(8, 6, spot=1.0, volatility=0.2, maturity=0.5,
                   generator=torch.Generator().manual_seed(5))  # fmt: skip
        return spot, torch.linspace(0.0, 0.5, 7, dtype=torch.float64), torch.full((8, 6), 0.2)

    expected = path_dependent_greeks(config, *inputs(), rate=0.02, dividend=0.0)
    with torch.inference_mode():
        greeks = path_dependent_greeks(config, *inputs(), rate=0.02, dividend=0.0)
        delta = path_dependent_delta(config, *inputs(), rate=0.02, dividend=0.0)
    for got, want in zip((*greeks, delta), (*expected, expected.delta), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0.0)


def test_a_knocked_out_barrier_has_no_band() -> None:
    # the band feature and the Whalley-Wilmott band come from the derivative's own gamma: zero
    # once an up-and-out barrier has been hit (the European gamma would not be)
    config = {"market": {**MARKET, "n_steps": 20, "cost": 0.001},
              "derivative": {"type": "barrier", "barrier": 1.05, "barrier_type": "up_out"}}  # fmt: skip
    market = Market(config_from_dict(config))
    data, _ = make_paths(market, 2000, split="test", seed=2)
    past = data.spot[:, :-1]
    hit = torch.cumsum((past >= 1.05).to(torch.int32), dim=1) > 0
    assert bool(hit.any()) and bool((~hit).any())
    assert bool((data.features[..., 4][hit] == 0).all())
    assert bool((data.features[..., 4][~hit] > 0).any())
    width = WhalleyWilmott(market, risk_aversion=1.0).half_width(data)
    assert bool((width[hit] == 0).all()) and bool((width[~hit] > 0).any())


@pytest.mark.parametrize("is_call", [True, False], ids=["call", "put"])
def test_asian_delta_at_every_step_is_turnbull_wakemans_on_the_fixings_left(is_call: bool) -> None:
    # weekly fixings t_1 .. t_20 (whole days for QuantLib), valued at each step with the fixings
    # so far as QuantLib's running sum: Levy's continuous average over the time left had deltas
    # about 0.01 off QuantLib's TurnbullWakemanAsianEngine at steps 0-17
    n, rate, dividend, vol, h = 20, 0.03, 0.01, 0.25, 1e-5
    grid = torch.linspace(0.0, 7 * n / 365, n + 1, dtype=torch.float64)
    spot = gbm(2, n, spot=1.0, volatility=vol, maturity=float(grid[-1]),
               generator=torch.Generator().manual_seed(4))  # fmt: skip
    delta = path_dependent_delta(DerivativeConfig(type="asian", is_call=is_call), spot, grid,
                                 torch.full((2, n), vol, dtype=torch.float64), rate=rate,
                                 dividend=dividend)  # fmt: skip
    expected = torch.empty_like(delta)
    for path, j in itertools.product(range(2), range(n)):
        now, past = float(spot[path, j]), float(spot[path, 1 : j + 1].sum())
        up, down = (bs_asian_tw_price(
            spot=now * (1 + e), strike=1.0, volatility=vol, rate=rate, dividend=dividend,
            fixing_times=[7 * (i - j) / 365 for i in range(j + 1, n + 1)], is_call=is_call,
            running_sum=past, past_fixings=j) for e in (h, -h))  # fmt: skip
        expected[path, j] = (up - down) / (2 * h * now)
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-8)


def _two_fixings_left(spot, past, n, dt, vol, rate, call) -> float:
    """The Asian with ``S(t + dt)`` and ``S(t + 2 dt)`` its fixings left, exactly: the European on
    ``S(t + 2 dt)`` struck at ``n K - past - S(t + dt)`` (K = 1), integrated over ``S(t + dt)``."""

    def european(z: float) -> float:
        s = spot * math.exp((rate - 0.5 * vol**2) * dt + vol * math.sqrt(dt) * z)
        strike = n - past - s
        if strike <= 0:
            return s - strike * math.exp(-rate * dt) if call else 0.0
        return float(black_scholes.price(spot=s, strike=strike, maturity=dt, volatility=vol,
                                         rate=rate, is_call=call))  # fmt: skip

    integral = quad(lambda z: norm.pdf(z) * european(z), -12, 12, epsabs=1e-13, epsrel=1e-13,
                    limit=400)[0]  # fmt: skip
    return math.exp(-rate * dt) * integral / n


@pytest.mark.parametrize(("n_steps", "tolerance"), [(4, 1e-3), (20, 1e-4)])
def test_asian_delta_with_two_fixings_left_is_near_the_exact_one(
    n_steps: int, tolerance: float
) -> None:
    # the moment match with two fixings left against the option priced by quadrature (3e-4 off
    # on 4 steps, 3e-5 on 20); Levy's continuous average was 0.042 and 0.0016 off
    rate, vol, h, n = 0.02, 0.2, 1e-5, n_steps
    grid = torch.linspace(0.0, 0.5, n + 1, dtype=torch.float64)
    for is_call, last in itertools.product([True, False], [0.85, 0.95, 1.0, 1.05, 1.15]):
        spot = torch.ones(1, n + 1, dtype=torch.float64)
        spot[0, n - 2] = last
        delta = path_dependent_delta(DerivativeConfig(type="asian", is_call=is_call), spot, grid,
                                     torch.full((1, n), vol, dtype=torch.float64), rate=rate,
                                     dividend=0.0)  # fmt: skip
        past = float(spot[0, 1 : n - 1].sum())
        up, down = (_two_fixings_left(last * (1 + e), past, n, 0.5 / n, vol, rate, is_call)
                    for e in (h, -h))  # fmt: skip
        exact = (up - down) / (2 * h * last)
        assert float(delta[0, n - 2]) == pytest.approx(exact, rel=0, abs=tolerance)


def test_asian_greeks_are_computed_in_blocks_of_paths_with_the_same_values(monkeypatch) -> None:
    # the variance term is (N, T, T): 16,384 paths of 100 steps took 7.7 GB at once; blocks of
    # paths bound it, and each path's greeks depend on its own path alone
    from qfnet.hedging import deltas

    n_steps, n_paths = 4, 7
    grid = torch.linspace(0.0, 0.5, n_steps + 1, dtype=torch.float64)
    spot = gbm(n_paths, n_steps, spot=1.0, volatility=0.2, maturity=0.5,
               generator=torch.Generator().manual_seed(3))  # fmt: skip
    vol = torch.full((n_paths, n_steps), 0.2, dtype=torch.float64)
    derivative = DerivativeConfig(type="asian")
    whole = path_dependent_greeks(derivative, spot, grid, vol, rate=0.02, dividend=0.01)
    seen, price = [], deltas.discrete_asian_price

    def recorded(**kwargs):
        seen.append(kwargs["spot"].shape[0])
        return price(**kwargs)

    monkeypatch.setattr(deltas, "discrete_asian_price", recorded)
    monkeypatch.setattr(deltas, "_ASIAN_BLOCK_ELEMENTS", 3 * n_steps * n_steps)
    blocks = path_dependent_greeks(derivative, spot, grid, vol, rate=0.02, dividend=0.01)
    assert seen == [3, 3, 1]
    for field in ("delta", "gamma", "vega"):
        torch.testing.assert_close(getattr(blocks, field), getattr(whole, field), rtol=1e-13,
                                   atol=1e-15)  # fmt: skip
    delta = path_dependent_delta(derivative, spot, grid, vol, rate=0.02, dividend=0.01)
    torch.testing.assert_close(delta, whole.delta, rtol=1e-13, atol=1e-15)
    assert seen[3:] == [3, 3, 1]
