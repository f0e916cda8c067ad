"""The opt-in compiled implied-vol solver (``compile=True``, the fast path of the benchmark) equals eager."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pricing import black_scholes as bs


def _options(n: int, seed: int) -> dict[str, torch.Tensor]:
    """The benchmark's quotes, and a few rows that are invalid, below intrinsic or above the bound."""
    rng = np.random.default_rng(seed)
    maturity = torch.as_tensor(np.exp(rng.uniform(math.log(7 / 365), math.log(3.0), n)))
    vol = torch.as_tensor(rng.uniform(0.05, 1.0, n))
    strike = 100.0 * torch.exp(torch.as_tensor(rng.uniform(-3.0, 3.0, n)) * vol * maturity.sqrt())
    is_call = torch.as_tensor(rng.random(n) < 0.5)
    price = bs.black_price(forward=100.0, strike=strike, maturity=maturity, volatility=vol,
                           is_call=is_call)  # fmt: skip
    price[:4] = torch.tensor([math.nan, -1.0, 1e6, 0.0])
    return dict(price=price, forward=100.0, strike=strike, maturity=maturity, is_call=is_call)


@pytest.mark.slow
def test_compiled_implied_vols_and_statuses_equal_the_eager_ones():
    options = _options(20_000, seed=3)
    vol, status = bs.implied_vol_with_status(**options)
    vol_c, status_c = bs.implied_vol_with_status(**options, compile=True)
    assert torch.equal(status_c, status) and int((status == 0).sum()) >= 20_000 - 4
    torch.testing.assert_close(vol_c, vol, rtol=1e-13, atol=0.0, equal_nan=True)
    start = bs.black_implied_vol(**options) * 1.02  # NaN where unsolved: the guess there
    vol_s, status_s = bs.implied_vol_with_status(**options, initial_vol=start, compile=True)
    assert torch.equal(status_s, status)
    torch.testing.assert_close(vol_s, vol, rtol=1e-13, atol=0.0, equal_nan=True)


@pytest.mark.slow
def test_compiled_implied_vols_at_tiny_total_vol_are_accurate():
    # The fused steps difference two erfcx values that cancel for a tiny s; such elements were
    # "done" there with vols 3e-10 off (s = 1e-6): they go on to the eager, accurate steps.
    rng = np.random.default_rng(13)
    s = torch.as_tensor(np.exp(rng.uniform(math.log(1e-6), math.log(4e-3), 8192)))
    z = torch.as_tensor(rng.uniform(1.05, 30.0, 8192))  # out of the money, d1 < -1
    vol, strike = s * math.sqrt(365.0), torch.exp(z * s)
    price = bs.black_price(forward=1.0, strike=strike, maturity=1 / 365, volatility=vol)
    iv, status = bs.implied_vol_with_status(price=price, forward=1.0, strike=strike,
                                            maturity=1 / 365, compile=True)  # fmt: skip
    resolvable = price > 1e-300
    assert bool((status[resolvable] == 0).all())
    torch.testing.assert_close(iv[resolvable], vol[resolvable], rtol=1e-12, atol=0.0)


@pytest.mark.slow
def test_compiled_implied_vols_near_the_money_at_tiny_total_vol_are_accurate():
    # The fused steps took erf(t1) - erf(t2) and exp(x/2)/2 - exp(-x/2)/2 as they read, both of
    # which cancel near the money at a tiny s: vols 3e-11 off (s from 1e-8 to 1e-3), status "ok".
    rng = np.random.default_rng(14)
    s = torch.as_tensor(np.exp(rng.uniform(math.log(1e-8), math.log(1e-3), 8192)))
    strike = torch.exp(torch.as_tensor(rng.uniform(-0.99, 0.99, 8192)) * s)  # -1 < d1 < 1
    vol = s * math.sqrt(365.0)
    price = bs.black_price(forward=1.0, strike=strike, maturity=1 / 365, volatility=vol)
    iv, status = bs.implied_vol_with_status(price=price, forward=1.0, strike=strike,
                                            maturity=1 / 365, compile=True)  # fmt: skip
    assert bool((status == 0).all())
    torch.testing.assert_close(iv, vol, rtol=1e-14, atol=0.0)
