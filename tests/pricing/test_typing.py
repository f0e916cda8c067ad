"""Shape helpers of pricing._typing: torch's broadcasting rule without torch's first-call cost."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from pricing._typing import broadcast_shape, broadcast_shapes


@pytest.mark.parametrize(
    "shapes",
    [((3,), (2, 1)), ((), (4,)), ((1, 5), (5,)), ((2, 0), (1,)), ((7, 1, 3), (6, 1))],
)
def test_broadcast_shapes_is_torchs_rule(shapes):
    assert broadcast_shapes(*shapes) == torch.broadcast_shapes(*shapes)
    assert isinstance(broadcast_shapes(*shapes), torch.Size)


def test_shapes_that_do_not_broadcast_name_their_inputs():
    with pytest.raises(ValueError, match=r"\(3,\), \(4,\)"):
        broadcast_shape([torch.zeros(3), torch.zeros(4)])


def test_compiled_code_broadcasts_symbolic_shapes():
    def area(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.ones(broadcast_shapes(a.shape, b.shape))

    compiled = torch.compile(area, backend="eager", dynamic=True)
    assert compiled(torch.zeros(3), torch.zeros(2, 1)).shape == (2, 3)


def test_pricing_and_calibrating_do_not_import_sympy():
    """Eager ``torch.broadcast_shapes`` imports sympy on its first call (0.5-1.2 s, a third of a
    ``qfnet calibrate`` run): pricers and the direct calibration must not call it."""
    script = textwrap.dedent(
        """
        import sys
        import pandas as pd
        import torch
        from pricing import black_scholes, heston, sabr
        from pricing.calibration import calibrate
        from pricing.quote_cleaning import prepare_quotes
        from pricing.quotes import read_quotes

        strike = torch.tensor([80.0, 90.0, 100.0, 110.0, 120.0] * 2, dtype=torch.float64)
        maturity = torch.tensor([0.5] * 5 + [1.0] * 5, dtype=torch.float64)
        black_scholes.price(spot=100.0, strike=strike, maturity=maturity, volatility=0.2)
        sabr.lognormal_vol(forward=100.0, strike=strike, maturity=maturity, alpha=0.2, beta=1.0,
                           rho=-0.3, nu=0.5)
        premium = heston.price(spot=100.0, strike=strike, maturity=maturity, v0=0.04,
                               kappa=1.5, theta=0.05, sigma=0.5, rho=-0.7)
        iv = black_scholes.black_implied_vol(price=premium, forward=100.0, strike=strike,
                                             maturity=maturity)
        table = pd.DataFrame({"strike": strike.numpy(), "maturity": maturity.numpy(),
                              "spot": 100.0, "rate": 0.0, "implied_vol": iv.numpy()})
        quotes, _ = prepare_quotes(read_quotes(table))
        calibrate("heston", quotes, method="direct", n_scan=16, n_starts=1)
        print("sympy" in sys.modules)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=300)  # fmt: skip
    assert run.stdout.strip().splitlines()[-1] == "False", run.stderr
