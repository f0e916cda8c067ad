"""The opt-in compiled Heston pricer (``compile=True``, the fast path of the benchmark) equals eager."""

from __future__ import annotations

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
