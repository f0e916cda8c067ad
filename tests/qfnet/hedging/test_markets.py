"""Markets: martingale instrument prices, payoffs, features, Heston delta table, path files."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pricing import black_scholes, heston
from qfnet.hedging.backtest import read_paths
from qfnet.hedging.config import ConfigError, config_from_dict
from qfnet.hedging.markets import N_FEATURES, Market, pack, unpack
from qfnet.hedging.pnl import run_strategy
from qfnet.hedging.strategies import BlackScholesDelta, HestonDelta, NoHedge, WhalleyWilmott
from qfnet.hedging.train import make_paths

HESTON = {"model": "heston", "v0": 0.05, "kappa": 2.0, "theta": 0.04, "sigma": 0.5, "rho": -0.7}


def _market(**market: object) -> Market:
    return Market(config_from_dict({"market": {"n_steps": 10, **market}}))


def _mean_within(sample: torch.Tensor, target: float, k: float = 4.0) -> None:
    se = sample.std().item() / math.sqrt(sample.numel())
    assert abs(sample.mean().item() - target) < k * se + 1e-12


def test_discounted_gains_with_dividends_are_martingales() -> None:
    market = _market(rate=0.05, dividend=0.03, volatility=0.3, maturity=1.0)
    data, _ = make_paths(market, 40_000, split="train", seed=0)
    gains = (data.prices[:, 1:, 0] - data.prices[:, :-1, 0] + data.income[:, :, 0]).sum(1)
    _mean_within(gains, 0.0)
    # the discounted call payoff averages to the Black-Scholes price
    bs = black_scholes.price(spot=1.0, strike=1.0, maturity=1.0, volatility=0.3, rate=0.05,
                             dividend=0.03)  # fmt: skip
    _mean_within(data.payoff, bs.item())


def test_variance_swap_price_is_a_martingale_under_heston() -> None:
    market = _market(**HESTON, maturity=0.5, instruments=["underlying", "variance_swap"])
    data, _ = make_paths(market, 40_000, split="train", seed=1)
    swap = data.prices[..., 1]
    assert data.prices.shape[-1] == 2
    _mean_within(swap[:, -1], swap[0, 0].item())
    # the fair strike: the expected sampled (trapezoid) variance, summed step by step from
    # E[v_t] = theta + (v0 - theta) e^{-kappa t}, close to the continuous average on this grid
    grid = [0.05 * j for j in range(11)]
    mean_v = [0.04 + 0.01 * math.exp(-2.0 * t) for t in grid]
    sampled = sum(0.5 * (a + b) * 0.05 for a, b in itertools.pairwise(mean_v))
    assert swap[0, 0].item() == pytest.approx(sampled / 0.5, rel=1e-12)
    continuous = 0.04 + (0.05 - 0.04) * (1 - math.exp(-1.0)) / 1.0
    assert swap[0, 0].item() == pytest.approx(continuous, rel=2e-4)


def test_variance_swap_price_is_a_martingale_on_a_coarse_grid() -> None:
    # four steps of a quarter, kappa 5: the expected continuous integral priced a payoff of
    # the variance sampled on the grid, and the price drifted 2.5% up (z = 40 on 400,000 paths)
    heston = {**HESTON, "v0": 0.09, "kappa": 5.0}
    market = _market(**heston, maturity=1.0, n_steps=4, rate=0.05,
                     instruments=["underlying", "variance_swap"])  # fmt: skip
    data, _ = make_paths(market, 40_000, split="train", seed=2)
    swap = data.prices[..., 1]
    for step in range(1, 5):
        _mean_within(swap[:, step] - swap[:, step - 1], 0.0)


def test_features_are_observable_and_pack_round_trips() -> None:
    market = _market(**HESTON)
    data, _ = make_paths(market, 64, split="val", seed=2)
    assert data.features.shape == (64, 10, N_FEATURES)
    assert bool(torch.isfinite(data.features).all())
    tau = (market.time_grid[-1] - market.time_grid[:-1]) / market.time_grid[-1]
    torch.testing.assert_close(data.features[0, :, 1], tau, rtol=0, atol=1e-15)
    back = unpack(pack(data), 10, 1)
    for a, b in zip(back, data, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"packed paths must have shape \(N, "):
        unpack(pack(data)[:, 1:], 10, 1)


def test_path_dependent_payoffs_are_consistent_with_the_european() -> None:
    common = {"market": {"n_steps": 10}, "paths": {"test": 10}}
    euro = Market(config_from_dict(common))
    raw = euro.simulate(5000, generator=torch.Generator().manual_seed(3))
    vanilla = euro.payoff(raw.spot)
    knock_out = Market(config_from_dict({**common, "derivative": {
        "type": "barrier", "barrier": 1.05, "barrier_type": "up_out"}})).payoff(raw.spot)  # fmt: skip
    asian = Market(config_from_dict({**common, "derivative": {"type": "asian"}})).payoff(raw.spot)
    lookback = Market(config_from_dict({**common, "derivative": {"type": "lookback"}}))
    floating = lookback.payoff(raw.spot)
    assert bool((knock_out <= vanilla + 1e-15).all())
    assert bool((knock_out < vanilla).any())
    assert asian.mean() < vanilla.mean()  # averaging lowers the volatility
    assert bool((floating >= vanilla - 1e-15).all())  # S_T - min S >= (S_T - S_0)^+


def test_heston_delta_table_matches_the_pricer() -> None:
    market = _market(**HESTON)
    data, raw = make_paths(market, 500, split="test", seed=4)
    positions = HestonDelta(market).positions(data)[..., 0]
    torch.testing.assert_close(HestonDelta(market).variance(data), raw.variance[:, :-1],
                               rtol=1e-9, atol=1e-7)  # fmt: skip
    tau = market.time_grid[-1] - market.time_grid[:-1]
    # every path and step, near-zero variances included (Feller's condition fails here), where
    # a moneyness scaled by sqrt(v tau) instead of the expected total variance was 0.2 off
    assert bool((raw.variance[:, :-1] < 1e-3).any())
    direct = heston.delta(
        spot=raw.spot[:, :-1], strike=1.0, maturity=tau, v0=raw.variance[:, :-1],
        kappa=2.0, theta=0.04, sigma=0.5, rho=-0.7,
    )  # fmt: skip
    torch.testing.assert_close(positions, direct, rtol=0, atol=2e-3)
    asian = Market(config_from_dict({"market": {"n_steps": 10, **HESTON},
                                     "derivative": {"type": "asian"}}))  # fmt: skip
    with pytest.raises(ValueError, match=r"European options only; derivative\.type is 'asian'"):
        HestonDelta(asian)


def test_heston_delta_table_holds_its_tolerance_where_the_volatility_spans_a_wide_range() -> None:
    # vol of vol 1.5 (the pricer's validated box's edge): volatilities from 0 to about 0.95 on
    # 20 steps of 0.004 years; nodes uniform in the volatility, interpolated bilinearly, were
    # 4.1e-3 off at volatilities below 0.25 (1.5e-2 under the DAX fit of `qfnet demo`)
    params = {"kappa": 8.0, "theta": 0.08, "sigma": 1.5, "rho": -0.5}
    market = _market(model="heston", v0=0.2, maturity=0.08, n_steps=20, **params)
    data, raw = make_paths(market, 500, split="test", seed=4)
    variance = raw.variance[:, :-1]
    assert variance.sqrt().min() < 0.01 and variance.sqrt().max() > 0.8
    tau = market.time_grid[-1] - market.time_grid[:-1]
    direct = heston.delta(spot=raw.spot[:, :-1], strike=1.0, maturity=tau, v0=variance, **params)
    error = HestonDelta(market).positions(data)[..., 0] - direct
    # the docstring's figures: at most 1.4e-3, 6e-5 on average at most
    torch.testing.assert_close(error, torch.zeros_like(error), rtol=0, atol=1.5e-3)
    assert error.abs().mean() < 1e-4


@pytest.mark.parametrize("sizes", [{"n_moneyness": 1}, {"n_variance": 1}, {"n_variance": 2.5}])
def test_heston_delta_tables_of_fewer_than_two_nodes_are_refused_naming_the_size(sizes) -> None:
    # one node failed at the first positions() with "IndexError: index 1 is out of bounds"
    market = _market(model="heston", n_steps=2)
    (name,) = sizes
    with pytest.raises(ValueError, match=rf"{name} must be an integer >= 2"):
        HestonDelta(market, **sizes)
    # a numpy integer is an integer (the check refused np.int64(5))
    assert HestonDelta(market, **{name: np.int64(5)}).nx * HestonDelta(market).nv > 0


def test_baselines_behave_as_expected() -> None:
    market = _market(cost=1e-3)
    data, _ = make_paths(market, 4000, split="test", seed=5)
    none = run_strategy(NoHedge(), data, market)
    torch.testing.assert_close(none.pnl, -data.payoff, rtol=0, atol=0)
    delta = run_strategy(BlackScholesDelta(), data, market)
    ww_tight = run_strategy(WhalleyWilmott(market, 1e8), data, market)
    ww_loose = run_strategy(WhalleyWilmott(market, 1.0), data, market)
    torch.testing.assert_close(ww_tight.positions, delta.positions, rtol=0, atol=2e-3)
    assert ww_loose.turnover.mean() < 0.9 * delta.turnover.mean()
    assert delta.pnl.std() < 0.2 * none.pnl.std()
    # first purchase and final liquidation are both charged
    first = (delta.positions[:, 0, 0] * data.prices[:, 0, 0]).abs()
    last = (delta.positions[:, -1, 0] * data.prices[:, -1, 0]).abs()
    assert bool((delta.cost >= 1e-3 * (first + last) - 1e-15).all())


def test_whalley_wilmott_half_width_is_the_papers_with_its_discount_factor() -> None:
    # Whalley, Wilmott (1997): (3/2 e^{-r(T-t)} lambda S Gamma^2 / gamma)^(1/3), with a rate
    rate, cost, gamma = 0.08, 2e-3, 3.0
    market = _market(rate=rate, cost=cost, maturity=2.0, volatility=0.25)
    data, raw = make_paths(market, 50, split="test", seed=6)
    tau = market.time_grid[-1] - market.time_grid[:-1]
    s = raw.spot[:, :-1]
    bs_gamma = black_scholes.greeks(spot=s, strike=1.0, maturity=tau, volatility=0.25,
                                    rate=rate).gamma  # fmt: skip
    paper = (1.5 * torch.exp(-rate * tau) * cost * s * bs_gamma**2 / gamma) ** (1.0 / 3.0)
    torch.testing.assert_close(WhalleyWilmott(market, gamma).half_width(data), paper,
                               rtol=1e-10, atol=0)  # fmt: skip


@pytest.mark.parametrize("risk_aversion", [math.inf, math.nan, 0.0])
def test_whalley_wilmott_refuses_a_risk_aversion_that_is_not_finite_and_positive(
    risk_aversion: float,
) -> None:
    # inf was taken: a band of width 0, the delta hedge reported as the Whalley-Wilmott one
    with pytest.raises(ValueError, match=r"risk_aversion must be finite and > 0"):
        WhalleyWilmott(_market(), risk_aversion)


def test_read_paths_refuses_a_variance_column_for_a_black_scholes_market(tmp_path) -> None:
    # a Black-Scholes run hedged at its constant volatility: the column was read, checked, ignored
    rows = [{"path": p, "step": t, "spot": 1.0 + 0.01 * t, "variance": 0.09} for p in (0, 1)
            for t in range(11)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "long.parquet")
    with pytest.raises(
        ValueError,
        match=r"column 'variance' is read under market.model heston "
        r"only; this black_scholes run hedges at its constant market.volatility",
    ):
        read_paths(tmp_path / "long.parquet", _market())
    raw = read_paths(tmp_path / "long.parquet", _market(**HESTON))  # a Heston run reads it
    torch.testing.assert_close(raw.variance, torch.full((2, 11), 0.09, dtype=torch.float64))


def test_read_paths_wide_and_long_layouts(tmp_path) -> None:
    market = _market(spot=1.0)
    wide = pd.DataFrame([[100.0 + i + j for j in range(11)] for i in range(3)])
    wide.columns = [f"t{j}" for j in range(11)]
    wide.to_parquet(tmp_path / "wide.parquet")
    raw = read_paths(tmp_path / "wide.parquet", market)
    assert raw.spot.shape == (3, 11)
    torch.testing.assert_close(raw.spot[:, 0], torch.ones(3, dtype=torch.float64))
    long = wide.stack().reset_index()
    long.columns = ["path", "step", "spot"]
    long["step"] = long["step"].str[1:].astype(int)
    long.to_parquet(tmp_path / "long.parquet")
    torch.testing.assert_close(read_paths(tmp_path / "long.parquet", market).spot, raw.spot)
    wide.iloc[:, :5].to_parquet(tmp_path / "short.parquet")
    with pytest.raises(ValueError, match=r"expected 11 prices per path"):
        read_paths(tmp_path / "short.parquet", market)
    wide.iloc[1, 3] = -1.0
    wide.to_parquet(tmp_path / "neg.parquet")
    with pytest.raises(ValueError, match=r"path 1, step 3: price -1.0 is not a positive number"):
        read_paths(tmp_path / "neg.parquet", market)
    # a missing file said only its name; an empty one failed in torch.cat
    with pytest.raises(FileNotFoundError, match=r"paths file .*nope.parquet: no such file"):
        read_paths(tmp_path / "nope.parquet", market)
    wide.iloc[:0].to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match=r"no paths \(0 rows\)"):
        read_paths(tmp_path / "empty.parquet", market)
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"not a readable Parquet file"):
        read_paths(tmp_path / "text.parquet", market)


def test_read_paths_of_a_partitioned_parquet_folder(tmp_path) -> None:
    # a folder was refused ("a directory, not a Parquet file") though pandas reads a dataset
    # written with partition_cols; its partition keys come back as categories, in the order of
    # the folders found (path=10 before path=2), not as numbers
    market = _market(spot=1.0)
    long = pd.DataFrame([{"path": p, "step": t, "spot": 100.0 + p + t * (p - 5)}
                         for p in range(12) for t in range(11)])  # fmt: skip
    expected = torch.tensor([[(100.0 + p + t * (p - 5)) / (100.0 + p) for t in range(11)]
                             for p in range(12)], dtype=torch.float64)  # fmt: skip
    for key in ("path", "step"):
        long.to_parquet(tmp_path / f"by_{key}", partition_cols=[key])
        spot = read_paths(tmp_path / f"by_{key}", market).spot
        torch.testing.assert_close(spot, expected, rtol=1e-14, atol=0.0)
    wide = pd.DataFrame(expected.numpy() * 50.0, columns=[f"t{j}" for j in range(11)])
    wide.insert(0, "desk", ["a", "b"] * 6)  # a text key: a label, never a price
    wide.to_parquet(tmp_path / "by_desk", partition_cols=["desk"])
    spot = read_paths(tmp_path / "by_desk", market).spot  # the a rows first, then the b rows
    torch.testing.assert_close(spot, torch.cat([expected[0::2], expected[1::2]]), rtol=1e-14,
                               atol=0.0)  # fmt: skip
    (tmp_path / "by_desk" / "notes.txt").write_text("not parquet")
    with pytest.raises(ValueError, match=r"by_desk: not a readable Parquet file"):
        read_paths(tmp_path / "by_desk", market)


def test_read_paths_of_a_folder_partitioned_on_float_or_date_steps(tmp_path) -> None:
    # pyarrow reads the keys step=1.5 and step=2024-01-02 as text: such a folder was refused
    # ("column 'step' must hold numbers or dates ..., got str values such as '1.5'")
    market = _market(spot=1.0)
    days = pd.date_range("2024-01-01", periods=11)
    long = pd.DataFrame([{"path": p, "step": t, "spot": 100.0 + p + t * (p - 5)}
                         for p in range(3) for t in range(11)])  # fmt: skip
    expected = torch.tensor([[(100.0 + p + t * (p - 5)) / (100.0 + p) for t in range(11)]
                             for p in range(3)], dtype=torch.float64)  # fmt: skip
    # 1.5 t: the folder step=10.5 is found before step=3.0
    for name, steps in (("floats", long["step"] * 1.5), ("dates", days[long["step"]])):
        long.assign(step=steps).to_parquet(tmp_path / name, partition_cols=["step"])
        spot = read_paths(tmp_path / name, market).spot
        torch.testing.assert_close(spot, expected, rtol=1e-14, atol=0.0)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"market": {**HESTON, "instruments": ["underlying", "variance_swap"]}},
        {"derivative": {"type": "barrier", "barrier": 1.05, "barrier_type": "up_out"}},
    ],
    ids=["bs", "heston_variance_swap", "barrier"],
)
def test_market_data_in_blocks_equals_one_block(
    monkeypatch: pytest.MonkeyPatch, extra: dict
) -> None:
    # Market.data works DATA_BLOCK paths at a time (bounded temporaries); the blocks add up to
    # the data of all paths at once, a shorter last block included (to the last bits but for the
    # odd rounding of a vectorised loop split elsewhere: 5 of 30,000 barrier features, 1.2e-14
    # off at 8.5, and 3 of 6,000 barrier deltas, 3.3e-15 off at -0.117, where Black's
    # erf(t1) - erf(t2) is taken plainly, to within 100 ulps: pricing._normalized_black)
    market = Market(
        config_from_dict({**extra, "market": {"n_steps": 6, **extra.get("market", {})}})
    )
    raw = market.simulate(1000, generator=torch.Generator().manual_seed(8))
    monkeypatch.setattr("qfnet.hedging.markets.DATA_BLOCK", 10**9)
    whole = market.data(raw)
    monkeypatch.setattr("qfnet.hedging.markets.DATA_BLOCK", 300)
    blocked = market.data(raw)
    for a, b in zip(whole, blocked, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-14, atol=1e-14)


def test_heston_vol_proxy_feature_starts_at_zero_in_float64() -> None:
    # sigma_hat / sigma0 - 1 at t = 0: sigma0 was computed from a float32 v0 (2.3e-8 off)
    config = config_from_dict({"market": {"model": "heston", "v0": 0.06, "kappa": 2.0,
                                          "theta": 0.04, "sigma": 0.5, "rho": -0.7, "n_steps": 5},
                               "training": {"dtype": "float64"}})  # fmt: skip
    market = Market(config)
    data = market.data(market.simulate(64, generator=torch.Generator().manual_seed(0)))
    assert float(data.features[:, 0, 2].abs().max()) < 1e-15


def test_long_paths_with_a_repeated_step_name_the_row(tmp_path) -> None:
    market = _market(spot=1.0)
    long = pd.DataFrame({"path": [0] * 11 + [0], "step": [*range(11), 3],
                         "spot": [100.0] * 12})  # fmt: skip
    long.to_parquet(tmp_path / "dup.parquet")
    with pytest.raises(ValueError, match=r"row 12 repeats path 0, step 3"):
        read_paths(tmp_path / "dup.parquet", market)
    with pytest.raises(ValueError, match=r"split must be one of \['test', 'train', 'val'\]"):
        make_paths(market, 4, split="tst", seed=0)


@pytest.mark.parametrize(
    ("market", "match"),
    [({"maturity": 100.0, "volatility": 5.0}, r"a simulated spot is 0.0 .*market.maturity "
      r"100.0 is too long for the volatility \(market.volatility 5.0\)"),
     ({"maturity": 30.0, "rate": 30.0}, r"a simulated spot is inf .*\(market.rate 30.0, "),
     ({"model": "heston", "maturity": 100.0, "theta": 30.0}, r"market.theta 30.0")],
)  # fmt: skip
def test_spot_paths_out_of_the_float_range_name_the_market_keys(market, match) -> None:
    # the spot underflowed to 0 (or overflowed) and the delta failed on it naming no key:
    # "spot must be finite and > 0; got 0.0 at index (0, 4)"
    market = Market(config_from_dict({"market": {"n_steps": 5, **market}}))
    with pytest.raises(ConfigError, match=match):
        market.simulate(16, generator=torch.Generator().manual_seed(0))


def test_lookback_features_measure_moneyness_against_the_spot_it_has_no_strike() -> None:
    # the floating-strike lookback's moneyness features used derivative.strike, which it does
    # not have: at market.spot 100 (strike left at 1) log(S/K) / (sigma0 sqrt(T)) started at 81
    # and d1 sat at its clip, 6, on every path; the same paths at spot 1 started at 0
    config = {"n_steps": 5}
    unit = Market(config_from_dict({"market": config, "derivative": {"type": "lookback"}}))
    raw = unit.simulate(64, generator=torch.Generator().manual_seed(0))
    scaled = Market(config_from_dict({"market": {**config, "spot": 100.0},
                                      "derivative": {"type": "lookback"}}))  # fmt: skip
    features = scaled.data(raw._replace(spot=raw.spot * 100.0)).features
    torch.testing.assert_close(
        features[:, 0, 0], torch.zeros(64, dtype=features.dtype), rtol=0.0, atol=1e-15
    )
    torch.testing.assert_close(
        features[..., :4], unit.data(raw).features[..., :4], rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("cost", [1e-3, 0.0])
def test_a_path_fallen_to_1e_300_of_its_start_gives_the_policy_finite_features(
    tmp_path, cost
) -> None:
    # the floating-strike lookback's gamma there is ~1e299: the band feature (cost S Gamma^2)^(1/3)
    # was inf (NaN at zero cost), and the learned policy's positions and P&L NaN
    from qfnet.hedging.train import build_model

    config = config_from_dict({"market": {"n_steps": 4, "cost": cost},
                               "derivative": {"type": "lookback", "is_call": True}})  # fmt: skip
    market = Market(config)
    fall = [100.0, 1e-298, 1e-298, 2e-298, 1e-298]
    pd.DataFrame([fall, [100.0, 101.0, 99.0, 100.0, 102.0]], columns=[str(t) for t in range(5)]
                 ).to_parquet(tmp_path / "fall.parquet")  # fmt: skip
    data = market.data(read_paths(tmp_path / "fall.parquet", market))
    assert torch.isfinite(data.features).all()
    band = data.features[..., 4]
    expected = 1e6 if cost else 0.0
    torch.testing.assert_close(
        band[0, 1:], torch.full((3,), expected, dtype=band.dtype), rtol=0.0, atol=0.0
    )
    assert 0 < band[1].max() < 100 if cost else band[1].max() == 0  # the other path's: as before
    learned = run_strategy(build_model(config, market).strategy, data, market)
    assert torch.isfinite(learned.pnl).all()
    positions = run_strategy(WhalleyWilmott(market, 1.0), data, market).positions[0, :, 0]
    if cost:  # a band that never trades, as the infinite one
        torch.testing.assert_close(positions[1:], positions[:1].expand(3), rtol=0, atol=0)
