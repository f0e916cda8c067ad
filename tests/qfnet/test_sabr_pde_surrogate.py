"""SABR beyond Hagan (issue 5, item 3): the shipped SABR surrogate trained on QuantLib PDE labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pricing.black_scholes import black_implied_vol
from pricing.datasets import SABR_PDE_DOMAIN, DomainError
from pricing.quantlib import sabr_fd_price
from qfnet.cli import app
from qfnet.sabr_pde import compare_with_pde
from qfnet.surrogate import SABR_PDE_SURROGATE, implied_vol, load_surrogate


def test_shipped_surrogate_beats_hagan_tenfold_against_the_pde() -> None:
    net = load_surrogate(SABR_PDE_SURROGATE)
    assert net.domain == SABR_PDE_DOMAIN and net.base == "sabr-hagan"
    points = compare_with_pde(48, seed=20_261_126).points
    assert points["valid"].mean() > 0.9
    valid = points[points["valid"]]
    ours_bp, hagan_bp = valid["surrogate_bp"], valid["hagan_bp"]
    assert ours_bp.mean() * 10.0 <= hagan_bp.mean(), (ours_bp.mean(), hagan_bp.mean())


def test_shipped_surrogate_refuses_maturities_beyond_ten_years() -> None:
    net = load_surrogate(SABR_PDE_SURROGATE)
    with pytest.raises(DomainError, match="maturity"):
        implied_vol(net, alpha=0.2, beta=0.5, rho=-0.3, nu=0.4, maturity=20.0, log_moneyness=0.0)


def test_price_cli_sabr_surrogate_rescales_alpha_to_the_forward(tmp_path) -> None:
    forward, beta, alpha_unit = 100.0, 0.5, 0.25  # alpha quoted at F = 1 is alpha F^(beta - 1)
    alpha = alpha_unit * forward ** (1.0 - beta)
    strikes = np.array([85.0, 100.0, 115.0])
    quotes = pd.DataFrame({"option_type": ["put", "call", "call"], "strike": strikes,
                           "maturity": 5.0, "forward": forward, "discount": 0.9})  # fmt: skip
    quotes.to_csv(tmp_path / "q.csv", index=False)
    params = f'{{"alpha": {alpha}, "beta": {beta}, "rho": -0.3, "nu": 0.6}}'
    result = CliRunner().invoke(app, ["price", "--model", "sabr", "--engine", "surrogate",
                                      "--quotes", str(tmp_path / "q.csv"),
                                      "--out", str(tmp_path / "out.csv"), "--params", params])  # fmt: skip
    assert result.exit_code == 0, result.output
    got = pd.read_csv(tmp_path / "out.csv")["implied_vol"].to_numpy()
    price = sabr_fd_price(forward=forward, strike=strikes, maturity=5.0, alpha=alpha, beta=beta,
                          rho=-0.3, nu=0.6, is_call=np.array([False, True, True]))  # fmt: skip
    pde = black_implied_vol(price=torch.tensor(price), forward=forward,
                            strike=torch.tensor(strikes), maturity=5.0,
                            is_call=torch.tensor([False, True, True])).numpy()  # fmt: skip
    np.testing.assert_allclose(got, pde, rtol=0, atol=30e-4)  # within 30 bp of the PDE


def test_price_cli_refuses_a_shifted_sabr_surrogate_query(tmp_path) -> None:
    pd.DataFrame({"option_type": ["call"], "strike": [0.02], "maturity": [2.0], "forward": [0.01],
                  "discount": [1.0]}).to_csv(tmp_path / "q.csv", index=False)  # fmt: skip
    params = '{"alpha": 0.2, "beta": 0.5, "rho": -0.3, "nu": 0.4, "shift": 0.02}'
    result = CliRunner().invoke(app, ["price", "--model", "sabr", "--engine", "surrogate",
                                      "--quotes", str(tmp_path / "q.csv"),
                                      "--out", str(tmp_path / "o.csv"), "--params", params],
                                env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code != 0 and "unshifted" in result.output


def test_generate_takes_the_pde_domain_by_name(tmp_path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["generate", "--model", "heston", "--domain", "sabr-pde", "--n", "4",
                              "--out", str(tmp_path / "x")], env={"COLUMNS": "200"})  # fmt: skip
    assert bad.exit_code != 0 and "--domain" in bad.output and "heston" in bad.output
    ok = runner.invoke(app, ["generate", "--model", "sabr", "--domain", "sabr-pde", "--n", "8",
                             "--shard-size", "8", "--out", str(tmp_path / "d")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    frame = pd.read_parquet(tmp_path / "d" / "shard-00000.parquet")
    assert frame["maturity"].max() <= 10.0


@pytest.mark.parametrize("beta", [1.0 + 2.0**-52, -1e-12], ids=["above_one", "below_zero"])
def test_shipped_surrogate_answers_a_beta_within_the_edge_tolerance(beta: float) -> None:
    # inside the domain by its rtol (a beta computed in floating point at an edge), so priced
    # like the edge itself; Hagan's base vol refused it with a ValueError, even with "nan"
    net = load_surrogate(SABR_PDE_SURROGATE)
    query = dict(alpha=0.2, rho=-0.3, nu=0.4, maturity=2.0, log_moneyness=[-0.2, 0.0, 0.3])
    edge = implied_vol(net, beta=round(beta), **query)
    for mode in ("raise", "nan"):
        iv = implied_vol(net, beta=beta, out_of_domain=mode, **query)
        torch.testing.assert_close(iv, edge, rtol=1e-9, atol=0.0)
