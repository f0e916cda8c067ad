"""The opt-in compiled Heston pricer (``compile=True``, the fast path of the benchmark) equals eager."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pricing import heston


@pytest.mark.slow
def test_compiled_heston_prices_equal_the_eager_ones():
    rng = np.random.default_rng(11)
    n = 64
    kw = dict(
        spot=100.0,
        strike=torch.tensor(rng.uniform(60.0, 160.0, n)),
        maturity=torch.tensor(rng.uniform(7 / 365, 3.0, n)),
        v0=torch.tensor(rng.uniform(0.01, 0.25, n)),
        kappa=torch.tensor(rng.uniform(0.5, 5.0, n)),
        theta=torch.tensor(rng.uniform(0.01, 0.25, n)),
        sigma=torch.tensor(rng.uniform(0.1, 1.0, n)),
        rho=torch.tensor(rng.uniform(-0.95, 0.0, n)),
        is_call=torch.tensor(rng.random(n) < 0.5),
    )
    eager = heston.price(**kw)
    compiled = heston.price(**kw, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_compiled_float32_prices_compile_and_equal_the_eager_ones():
    # compile=True with dtype=float32 failed to compile (the saddle's 1e300 overflows float32),
    # fell back to eager with a warning and left compilation off for the rest of the process
    kw = dict(spot=100.0, strike=[60.0, 100.0, 200.0], maturity=1.0, v0=0.04, kappa=1.5,
              theta=0.04, sigma=0.5, rho=-0.7, dtype=torch.float32)  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        compiled = heston.price(**kw, compile=True)
    torch.testing.assert_close(compiled, heston.price(**kw), rtol=1e-6, atol=1e-6)
