"""Static-arbitrage checks: calendar spreads in total variance, on smiles quoted on different grids;
which quote of a call-price violation goes; bid/ask spreads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pricing.black_scholes import black_price
from pricing.quote_arbitrage import calendar_violations, strike_violations


def _smile_variance(k: np.ndarray, maturity: float) -> np.ndarray:
    """Total variance of a skewed, strongly curved smile (vol 0.2 - 0.1 k + 0.5 k^2)."""
    return (0.2 - 0.1 * k + 0.5 * k**2) ** 2 * maturity


def test_calendar_check_flags_only_planted_quotes_between_coarse_earlier_strikes() -> None:
    # A coarse earlier expiry and a fine later one, 2% more total variance everywhere: linear
    # interpolation of the coarse (convex) smile overstates it between strikes by more than 2%,
    # which flagged clean later quotes.
    coarse, fine = np.linspace(-0.4, 0.4, 5), np.linspace(-0.4, 0.4, 41)
    maturity = np.concatenate([np.full(5, 1.0), np.full(41, 1.02)])
    k = np.concatenate([coarse, fine])
    w = np.concatenate([_smile_variance(coarse, 1.0), _smile_variance(fine, 1.02)])
    planted = {5 + 10: 0.8, 5 + 25: 0.5}  # at an earlier strike (k = -0.2), between two (k = 0.1)
    for row, factor in planted.items():
        w[row] = factor * _smile_variance(k[row : row + 1], 1.0)[0]
    drop = calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w)
    assert np.flatnonzero(drop).tolist() == sorted(planted)


def _strike_smile() -> tuple[np.ndarray, np.ndarray]:
    """Strikes on an uneven grid and exact Black calls of a skewed smile (F = 100, T = 0.5)."""
    strikes = np.sort(np.concatenate([np.linspace(60.0, 140.0, 17), [99.0, 101.5, 103.0, 121.0]]))
    k = np.log(strikes / 100.0)
    calls = black_price(forward=100.0, strike=torch.tensor(strikes), maturity=0.5,
                        volatility=torch.tensor(0.2 - 0.1 * k + 0.3 * k**2))  # fmt: skip
    return strikes, calls.numpy()


@pytest.mark.parametrize(
    ("strike", "bump"),
    [(75.0, 0.1), (95.0, 0.5), (100.0, 0.1), (103.0, 0.1), (120.0, 0.1), (70.0, -0.1),
     (90.0, -0.5), (130.0, -0.1)],
)  # fmt: skip
def test_a_single_bad_quote_in_the_middle_of_a_smile_is_the_one_removed(
    strike: float, bump: float
) -> None:
    # Removing the bad quote or a neighbour clears the violation alike; the tie went to the
    # farther from the money, so the neighbour went and the bad quote stayed.
    strikes, calls = _strike_smile()
    assert not strike_violations(strike=strikes, call=calls, forward=100.0).any()
    bad = int(np.flatnonzero(strikes == strike)[0])
    calls[bad] += bump
    drop = strike_violations(strike=strikes, call=calls, forward=100.0)
    assert np.flatnonzero(drop).tolist() == [bad]


def test_a_mid_violation_that_the_bid_ask_spread_explains_removes_nothing() -> None:
    strikes, calls = _strike_smile()
    bad = int(np.flatnonzero(strikes == 103.0)[0])
    calls[bad] += 0.1  # concave by 0.057 at mid
    assert strike_violations(strike=strikes, call=calls, forward=100.0)[bad]
    # Bids and asks 0.06 apart: the middle's bid and the outer asks leave the butterfly at
    # 0.03 (middle) + 0.03 (outer, weights summing to 1) above its mid, which clears it.
    half_spread = np.full(len(strikes), 0.03)
    drop = strike_violations(strike=strikes, call=calls, forward=100.0, half_spread=half_spread)
    assert not drop.any()
    drop = strike_violations(strike=strikes, call=calls, forward=100.0, half_spread=half_spread / 5)
    assert np.flatnonzero(drop).tolist() == [bad]


def test_the_first_quote_is_checked_against_the_anchor_call_at_zero_strike() -> None:
    # Puts 10 at 50 and 15 at 100 (F = 100): two puts at 50 less one at 100 pay nothing
    # positive and cost 5, but only neighbour quotes were compared, so none was removed
    # (P(0) = 0, C(0) = F: the smile is concave through the origin).
    strikes, puts = np.array([50.0, 100.0, 110.0]), np.array([10.0, 15.0, 20.0])
    drop = strike_violations(strike=strikes, call=puts + 100.0 - strikes, forward=100.0)
    assert drop.tolist() == [True, False, False]
    # a call below its intrinsic value (slope from C(0) = F steeper than -1), alone in its expiry
    assert strike_violations(strike=np.array([80.0]), call=np.array([15.0]), forward=100.0)[0]
    # a bid/ask that allows a convex smile through the origin is no violation
    half = np.full(3, 2.0)
    drop = strike_violations(strike=strikes, call=puts + 100.0 - strikes, forward=100.0,
                             half_spread=half)  # fmt: skip
    assert not drop.any()


def test_a_violation_between_quotes_that_are_not_neighbours_is_found() -> None:
    # Each neighbour check let the wide quote between move its own way: the 150 call's bid
    # 0.69 is above the 130's ask 0.51 (buy the 130, sell the 150: 0.18 now, nothing to pay
    # later), with a 140 of 0.30/0.90 between them.
    strikes = np.array([120.0, 130.0, 140.0, 150.0])
    calls, half = np.array([1.0, 0.5, 0.6, 0.7]), np.array([0.01, 0.01, 0.3, 0.01])
    drop = strike_violations(strike=strikes, call=calls, forward=100.0, half_spread=half)
    assert drop.sum() == 1 and drop[[1, 3]].any()
    # The 110's bid 3.9 is above the chord of the asks at 100 and 130 (3.677): sell it, buy
    # 2/3 of a 100 and 1/3 of a 130; its neighbours' wide quotes cleared both butterflies.
    strikes = np.array([100.0, 110.0, 120.0, 130.0])
    calls, half = np.array([5.0, 4.2, 2.9, 1.0]), np.array([0.01, 0.3, 0.5, 0.01])
    drop = strike_violations(strike=strikes, call=calls, forward=100.0, half_spread=half)
    assert drop.sum() == 1 and drop[[0, 1, 3]].any()
    # within the spreads: a smile through 5, 3.7, 2.35, 1.0 passes
    calls = np.array([5.0, 3.9, 2.5, 1.0])
    assert not strike_violations(strike=strikes, call=calls, forward=100.0, half_spread=half).any()


def test_the_smile_ceiling_is_the_lower_hull_through_its_vertices() -> None:
    from pricing.quote_arbitrage import _convex_minorant, _lower_hull

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 40, 300):
        x = np.r_[0.0, np.sort(rng.choice(np.arange(1, 4000), n - 1, replace=False)) * 0.1]
        y = np.minimum.accumulate(100.0 * np.exp(-x / 50.0) + rng.normal(0.0, 1.0, n))
        vertex = _lower_hull(x, y)
        hull = np.interp(x, x[vertex], y[vertex])
        np.testing.assert_allclose(_convex_minorant(x, y), hull, rtol=0, atol=1e-11)


def test_a_noisy_expiry_builds_the_hull_once_per_removal_not_per_candidate(monkeypatch) -> None:
    # the hull's Python loop ran for every candidate of every removal: 14 s on a noisy
    # 500-strike expiry, 0.8 s before the check between non-neighbours
    import pricing.quote_arbitrage as arbitrage

    calls, real = [], arbitrage._lower_hull
    monkeypatch.setattr(arbitrage, "_lower_hull", lambda x, y: calls.append(1) or real(x, y))
    strikes = np.linspace(40.0, 200.0, 80)
    clean = black_price(forward=100.0, strike=torch.tensor(strikes), maturity=0.5,
                        volatility=0.2 + 0.1 * np.log(strikes / 100.0) ** 2).numpy()  # fmt: skip
    noisy = clean * (1 + 0.04 * np.random.default_rng(0).standard_normal(80))
    half = 0.025 * np.maximum(clean, 0.05)
    drop = strike_violations(strike=strikes, call=noisy, forward=100.0, half_spread=half)
    assert 0 < len(calls) <= drop.sum() + 1


def test_strikes_at_or_below_zero_are_refused_by_index() -> None:
    with pytest.raises(ValueError, match=r"strike: must be > 0, got 0\.0 at index 1"):
        strike_violations(strike=np.array([50.0, 0.0]), call=np.array([55.0, 100.0]),
                          forward=100.0)  # fmt: skip


def test_calendar_check_compares_with_every_earlier_expiry_not_only_the_previous() -> None:
    # A 1y expiry quoted only near the money hid the 6m wings from the 18m expiry: an 18m quote
    # with half the 6m total variance at k = 0.4 passed.
    wide, narrow = np.linspace(-0.4, 0.4, 9), np.linspace(-0.1, 0.1, 3)
    maturity = np.concatenate([np.full(9, 0.5), np.full(3, 1.0), np.full(9, 1.5)])
    k = np.concatenate([wide, narrow, wide])
    w = np.concatenate(
        [_smile_variance(wide, 0.5), _smile_variance(narrow, 1.0), _smile_variance(wide, 1.5)]
    )
    bad = 12 + 8
    w[bad] = 0.5 * _smile_variance(wide[8:], 0.5)[0]
    drop = calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w)
    assert np.flatnonzero(drop).tolist() == [bad]


def _assert_one_later_quote(k: list[float], *, below: float, above: float) -> None:
    """Four 1-year quotes at total variance 0.04 and a fifth at 1.5 years, ``k`` their
    log-moneyness: the fifth is a calendar violation at total variance ``below`` and kept at
    ``above`` (above the earlier smile)."""
    maturity = np.array([1.0, 1.0, 1.0, 1.0, 1.5])
    w = np.array([0.04, 0.04, 0.04, 0.04, below])
    drop = calendar_violations(maturity=maturity, log_moneyness=np.array(k), total_variance=w)
    assert drop.tolist() == [False, False, False, False, True]
    w[-1] = above
    assert not calendar_violations(maturity=maturity, log_moneyness=np.array(k),
                                   total_variance=w).any()  # fmt: skip


def test_calendar_check_reads_quotes_between_the_last_put_and_first_call_strike() -> None:
    # The floor came from one side's out-of-the-money prices: a later quote at k = 0, right of
    # the last earlier put (k = -0.05) and left of the first earlier call (k = 0.05), was held
    # only against the 0.05 call and passed at 3/4 of the earlier total variance.
    _assert_one_later_quote([-0.1, -0.05, 0.05, 0.1, 0.0], below=0.03, above=0.0405)


def test_calendar_check_with_bid_ask_variances_keeps_what_the_spread_explains() -> None:
    t = np.array([0.5, 0.5, 0.5, 1.0])
    k = np.array([-0.1, 0.0, 0.1, 0.0])
    w = np.array([0.021, 0.02, 0.021, 0.0195])  # the 1y mid is below the 6m smile
    assert calendar_violations(maturity=t, log_moneyness=k, total_variance=w)[3]
    bid, ask = w - 0.0004, w + 0.0004
    drop = calendar_violations(maturity=t, log_moneyness=k, total_variance=w,
                               total_variance_bid=bid, total_variance_ask=ask)  # fmt: skip
    assert not drop.any()


def test_bid_ask_inputs_are_checked_and_named() -> None:
    strikes, calls = _strike_smile()
    half_spread = np.full(len(strikes), 0.01)
    half_spread[3] = -0.01
    with pytest.raises(ValueError, match="half_spread: negative at index 3"):
        strike_violations(strike=strikes, call=calls, forward=100.0, half_spread=half_spread)
    with pytest.raises(ValueError, match="total_variance_ask: not a finite number at index 1"):
        calendar_violations(maturity=np.array([0.5, 1.0]), log_moneyness=np.zeros(2),
                            total_variance=np.full(2, 0.02),
                            total_variance_ask=np.array([0.02, np.nan]))  # fmt: skip


def test_calendar_check_of_a_call_and_a_put_at_each_earlier_strike_flags_no_clean_quote() -> None:
    # Both sides kept: the earlier smile had two nodes at each k, the chord between them divided
    # by zero and the smile fell back to linear interpolation, which overstates a coarse convex
    # smile: 27 of 41 later quotes with 2% more total variance everywhere were removed.
    coarse, fine = np.linspace(-0.4, 0.4, 5), np.linspace(-0.4, 0.4, 41)
    maturity = np.concatenate([np.full(10, 1.0), np.full(41, 1.02)])
    k = np.concatenate([coarse, coarse, fine])
    earlier = _smile_variance(coarse, 1.0)
    for call, put in ((1.0, 1.0001), (1.0001, 1.0)):  # vols a hair apart, either way round
        w = np.concatenate([call * earlier, put * earlier, _smile_variance(fine, 1.02)])
        assert not calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w).any()
    w[10 + 25] = 0.5 * _smile_variance(fine[25:26], 1.0)[0]  # a planted one still goes
    drop = calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w)
    assert np.flatnonzero(drop).tolist() == [10 + 25]


def test_calendar_floor_between_earlier_strikes_reads_a_wide_quote_at_its_ask() -> None:
    # The chords beside a later quote were extended from two earlier bids: a wide earlier quote
    # (ATM bid vol 15.5%, ask 23.7%) made the chord from it too flat, its extension 6% above the
    # earlier smile itself, and a quote a day later on the same smile (more total variance) went.
    t1, t2 = 0.25, 0.25 + 1 / 365
    k = np.concatenate([np.linspace(-0.15, 0.1, 6), [0.07]])
    maturity = np.concatenate([np.full(6, t1), [t2]])
    w = _smile_variance(k, maturity)
    bid, ask = w.copy(), w.copy()
    bid[3], ask[3] = 0.6 * w[3], 1.4 * w[3]  # k = 0
    drop = calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w,
                               total_variance_bid=bid, total_variance_ask=ask)  # fmt: skip
    assert not drop.any()
    w[-1] *= 0.8  # 20% below the earlier smile: still removed
    drop = calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w,
                               total_variance_bid=np.minimum(bid, w), total_variance_ask=w)  # fmt: skip
    assert drop.tolist() == [False] * 6 + [True]


def test_a_call_and_a_put_whose_forwards_differ_by_float_noise_are_one_node() -> None:
    # Per-row forwards 1e-12 apart put the put of each earlier strike 1e-12 beside its call: the
    # chord between the two, 1e12 times steeper than the smile, lifted the earlier smile to the
    # chords of its quotes, and 36 of 41 later quotes with 2% more total variance were removed.
    coarse, fine = np.linspace(-0.4, 0.4, 5), np.linspace(-0.4, 0.4, 41)
    maturity = np.concatenate([np.full(10, 1.0), np.full(41, 1.02)])
    put_k = coarse - np.log1p(1e-12)  # ln(K / (F (1 + 1e-12)))
    k = np.concatenate([coarse, put_k, fine])
    earlier = _smile_variance(coarse, 1.0)
    for call, put in ((1.0, 1.0001), (1.0001, 1.0)):
        w = np.concatenate([call * earlier, put * earlier, _smile_variance(fine, 1.02)])
        assert not calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w).any()


def test_calendar_check_reads_a_later_quote_between_the_first_two_earlier_strikes() -> None:
    # Left of every chord, the floor was the second node's price alone (below intrinsic here):
    # a later put at k = -0.4 with 1/8 of the earlier total variance, worth a fiftieth of the
    # earlier put at k = -0.6, passed at any variance down to 0.
    _assert_one_later_quote([-0.6, -0.2, 0.0, 0.2, -0.4], below=0.005, above=0.06)


def test_calendar_check_reads_past_a_wide_earlier_quote() -> None:
    # An earlier quote at k = -0.5 with a bid of no time value: the chords beside the later
    # quote (k = -0.45) were the only ones extended, and the later put, below the earlier put
    # of a lower strike (k = -0.6), passed.
    k = np.array([-0.6, -0.5, -0.3, -0.1, 0.0, 0.1, -0.45])
    maturity = np.array([1.0] * 6 + [1.5])
    w = np.array([0.04] * 6 + [0.02])
    bid, ask = w.copy(), w.copy()
    bid[1], ask[1] = 0.0, 0.08
    drop = calendar_violations(maturity=maturity, log_moneyness=k, total_variance=w,
                               total_variance_bid=bid, total_variance_ask=ask)  # fmt: skip
    assert drop.tolist() == [False] * 6 + [True]


def _least_price_lp(x: np.ndarray, low: np.ndarray, high: np.ndarray, at: float) -> float:
    """The least price at ``at`` of a call smile convex in strike with slopes in [-1, 0],
    between ``low`` and ``high`` at ``x``, by linear programming (a node at ``at`` added)."""
    from scipy.optimize import linprog

    nodes = np.r_[x, at]
    order = np.argsort(nodes)
    rows = []
    for a, b in itertools.pairwise(order):  # 0 >= slope >= -1
        step, row = nodes[b] - nodes[a], np.zeros(len(nodes))
        row[b], row[a] = 1 / step, -1 / step
        rows += [(row, 0.0), (-row, 1.0)]
    for a, b, c in zip(order[:-2], order[1:-1], order[2:], strict=True):  # convex
        row = np.zeros(len(nodes))
        row[a], row[c] = 1 / (nodes[b] - nodes[a]), 1 / (nodes[c] - nodes[b])
        row[b] = -row[a] - row[c]
        rows.append((-row, 0.0))
    a_ub, b_ub = np.array([r for r, _ in rows]), np.array([b for _, b in rows])
    objective = np.r_[np.zeros(len(x)), 1.0]
    bounds = [*zip(low, high, strict=True), (0.0, None)]
    result = linprog(objective, A_ub=a_ub, b_ub=b_ub + 1e-13, bounds=bounds, method="highs")
    assert result.status == 0
    return float(result.fun)


def test_calendar_floor_is_the_least_price_of_any_smile_within_the_earlier_quotes() -> None:
    from pricing.quote_arbitrage import _call_prices, _price_floor

    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 8):
        for _ in range(10):
            k = np.sort(rng.choice(np.linspace(-0.6, 0.5, 111), n, replace=False))
            w = (0.2 - 0.2 * rng.uniform() * k + 0.5 * rng.uniform() * k**2) ** 2
            w *= rng.uniform(0.02, 2.0)
            spread = 0.02 * rng.uniform() * rng.uniform(size=n)
            exact = _call_prices(k, w)
            low, high = np.maximum(exact - spread, 0.0), exact + spread
            at = np.exp(rng.uniform(k[0], k[-1], 4))
            floor = _price_floor(np.exp(k), low, high, at)
            expected = [_least_price_lp(np.exp(k), low, high, a) for a in at]
            np.testing.assert_allclose(floor, expected, rtol=0, atol=1e-9)
