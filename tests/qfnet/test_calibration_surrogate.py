"""Method "surrogate": mechanics with a small (untrained) surrogate, polish to the direct optimum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pricing.black_scholes import black_implied_vol
from pricing.calibration import calibrate, calibrate_many
from pricing.datasets import HESTON_DOMAIN, DomainError
from pricing.heston import otm_implied_vol
from pricing.heston import price as heston_price
from qfnet import calibration_surrogate  # registers the method
from qfnet.calibration_surrogate import fit_with_surrogate
from qfnet.surrogate import build_surrogate, implied_vol, load_surrogate, save_surrogate

TRUE = {"v0": 0.045, "kappa": 2.1, "theta": 0.06, "sigma": 0.65, "rho": -0.6}


def _synthetic_surface(noise_bp: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """6 x 11 Heston surface (K/F 0.8..1.2, 30 days to 3 years) with optional noise."""
    t = torch.tensor(np.repeat([30, 91, 182, 365, 730, 1095], 11) / 365.0)
    ratio = torch.tensor(np.tile(np.linspace(0.8, 1.2, 11), 6))
    otm = heston_price(forward=1.0, strike=ratio, maturity=t, is_call=ratio >= 1, **TRUE)
    iv = black_implied_vol(price=otm, forward=1.0, strike=ratio, maturity=t, is_call=ratio >= 1)
    iv = iv.numpy() + noise_bp * 1e-4 * np.random.default_rng(seed).standard_normal(66)
    return pd.DataFrame({"strike": 100 * ratio.numpy(), "maturity": t.numpy(), "forward": 100.0,
                         "discount": 1.0, "spot": 100.0, "implied_vol": iv})  # fmt: skip


@pytest.fixture(scope="module")
def tiny_surrogate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    net = build_surrogate(HESTON_DOMAIN, hidden=(8,))
    return save_surrogate(net, tmp_path_factory.mktemp("surrogate") / "model.pt")


def test_polished_surrogate_fit_recovers_a_clean_surface(tiny_surrogate: Path) -> None:
    # An untrained surrogate gives a poor start; the exact-pricer polish must still finish the job
    # (from the surrogate's answer alone: no network proposal, whatever is registered).
    fit = calibrate("heston", _synthetic_surface(), method="surrogate", surrogate=tiny_surrogate,
                    n_scan=64, n_starts=1, max_iterations=5, global_start="scan")  # fmt: skip
    assert fit.method == "surrogate"
    assert fit.rmse_iv_bp < 1e-3
    np.testing.assert_allclose([fit.params[n] for n in TRUE], list(TRUE.values()), rtol=1e-4)


def test_unpolished_fit_needs_every_quote_inside_the_domain(tiny_surrogate: Path) -> None:
    quotes = _synthetic_surface()  # 30-day strikes at +-20% are outside the surrogate's box
    with pytest.raises(NotImplementedError, match=r"domain covers [1-6][0-9] of 66 quotes"):
        calibrate("heston", quotes, method="surrogate", surrogate=tiny_surrogate, polish=False)


def test_missing_surrogate_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(NotImplementedError, match="needs a trained surrogate"):
        calibrate("heston", _synthetic_surface(), method="surrogate",
                  surrogate=tmp_path / "none.pt")  # fmt: skip


def test_network_method_registered_by_importing_its_module() -> None:
    import qfnet.calibration_network_method  # noqa: F401

    result = calibrate("heston", _synthetic_surface(), method="network")
    assert result.method == "network" and result.iterations == 0


def test_shipped_surrogate_with_the_network_start_reaches_the_direct_optimum() -> None:
    import qfnet.calibration_network_method  # noqa: F401  (network global start)

    quotes = _synthetic_surface(noise_bp=50.0, seed=3)
    surrogate = calibrate("heston", quotes, method="surrogate", seed=1)
    direct = calibrate("heston", quotes, method="direct", seed=1)
    # issue 6: after the polish, within 0.01 bp of the optimum
    assert surrogate.rmse_iv_bp == pytest.approx(direct.rmse_iv_bp, abs=0.01)
    assert 40.0 < surrogate.rmse_iv_bp < 55.0  # the noise level: no local minimum


def test_unpolished_fit_reports_heston_vols_at_its_parameters(tiny_surrogate: Path) -> None:
    # A weight-0 quote's model vol came back as its market vol (error 0 bp: the vols were
    # backed out of the weighted residual), and the others were the surrogate's vols, not
    # Heston's at the reported parameters (up to 14 bp apart with the shipped surrogate).
    quotes = _synthetic_surface(noise_bp=20.0)
    z = np.log(quotes["strike"] / quotes["forward"]) / (0.2 * np.sqrt(quotes["maturity"]))
    quotes = quotes[np.abs(z) <= 2.5].reset_index(drop=True)  # inside the surrogate's domain
    weights = np.ones(len(quotes))
    weights[[3, 20]] = 0.0
    fit = calibrate("heston", quotes, method="surrogate", surrogate=tiny_surrogate, polish=False,
                    weights=weights, n_scan=64, max_iterations=5, global_start="scan")  # fmt: skip
    ratio = torch.tensor(quotes["strike"].to_numpy() / 100.0)
    heston = otm_implied_vol(ratio=ratio, maturity=torch.tensor(quotes["maturity"].to_numpy()),
                             **fit.params).numpy()  # fmt: skip
    np.testing.assert_allclose(fit.residuals["model_iv"], heston, rtol=1e-12, atol=0)
    assert (fit.residuals["error_bp"].abs().iloc[[3, 20]] > 1.0).all()


def test_bounds_outside_the_surrogate_domain_name_the_parameter(tiny_surrogate: Path) -> None:
    # was "bounds must be numbers with lower <= upper", about valid bounds (6, 10)
    with pytest.raises(ValueError, match=r"bounds\['kappa'\]: \(6, 10\) lies outside the "
                                         r"surrogate's domain kappa \[0.5, 5\]"):  # fmt: skip
        calibrate("heston", _synthetic_surface(), method="surrogate", surrogate=tiny_surrogate,
                  bounds={"kappa": (6.0, 10.0)}, global_start="scan")  # fmt: skip


def test_a_surrogate_of_another_model_is_refused_naming_it(tmp_path: Path) -> None:
    # a SABR surrogate failed on a bare KeyError: 'v0', by calibrate and fit_with_surrogate
    sabr = save_surrogate(build_surrogate("sabr", hidden=(8,)), tmp_path / "sabr.pt")
    with pytest.raises(ValueError, match=r"option 'surrogate' \(.*sabr\.pt\) is a sabr surrogate"):
        calibrate("heston", _synthetic_surface(), method="surrogate", surrogate=sabr,
                  global_start="scan")  # fmt: skip
    ones = torch.ones(5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"the surrogate is a sabr surrogate"):
        fit_with_surrogate(load_surrogate(sabr), maturity=ones, log_moneyness=0.0 * ones,
                           market_iv=0.2 * ones, weight=ones)  # fmt: skip


def test_fit_with_surrogate_refuses_a_quote_outside_the_domain_naming_it(
    tiny_surrogate: Path,
) -> None:
    # its surrogate vol was NaN, so was every start's cost: the fit ended anywhere, unconverged
    net = load_surrogate(tiny_surrogate)
    t = torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 5.0], dtype=torch.float64)
    k = torch.tensor([-0.1, 0.0, 0.1, -0.1, 0.0, 0.1, 0.0], dtype=torch.float64)
    with pytest.raises(DomainError, match=r"maturity = 5\.0 at index 6 is outside"):
        fit_with_surrogate(net, maturity=t, log_moneyness=k, market_iv=torch.full_like(t, 0.2),
                           weight=torch.ones_like(t), n_scan=16, max_iterations=2)  # fmt: skip


def test_surrogate_options_are_checked_by_name(tiny_surrogate: Path) -> None:
    # polish_iterations=0 was refused as "max_iterations must be at least 1", "5" failed on
    # str < int; nodes was ignored without a word
    for options, message in [
        ({"polish_iterations": 0}, r"polish_iterations must be a whole number >= 1, got 0"),
        ({"polish_iterations": "5"}, r"polish_iterations must be a whole number >= 1, got '5'"),
        ({"nodes": 32}, r"method 'surrogate' for heston takes no option 'nodes'"),
    ]:
        with pytest.raises(ValueError, match=message):
            calibrate("heston", _synthetic_surface(), method="surrogate",
                      surrogate=tiny_surrogate, **options)  # fmt: skip


def test_a_surrogate_fit_without_a_scan_starts_from_x0_or_says_it_has_no_start(
    tiny_surrogate: Path,
) -> None:
    # n_scan=0 raised torch's "negative dimension -1" whether or not x0 gave a start
    quotes = _synthetic_surface()
    with pytest.raises(ValueError, match=r"needs n_scan > 0 or x0 starts"):
        calibrate("heston", quotes, method="surrogate", surrogate=tiny_surrogate, n_scan=0,
                  global_start="scan")  # fmt: skip
    fit = calibrate("heston", quotes, method="surrogate", surrogate=tiny_surrogate, n_scan=0,
                    n_starts=1, max_iterations=3, global_start="scan", x0=TRUE)  # fmt: skip
    np.testing.assert_allclose([fit.params[n] for n in TRUE], list(TRUE.values()), rtol=1e-4)


def test_a_start_outside_the_surrogates_domain_is_refused(tiny_surrogate: Path) -> None:
    # it was clipped into the surrogate's domain (kappa 0.5 to 5) without a word
    with pytest.raises(
        ValueError,
        match=r"x0\['kappa'\]: 8 is outside the box \[0.5, 5\] of "
        r"heston 'surrogate'; the surrogate was trained",
    ):
        calibrate("heston", _synthetic_surface(), method="surrogate", surrogate=tiny_surrogate,
                  x0=TRUE | {"kappa": 8.0})  # fmt: skip


def test_fit_with_surrogate_returns_its_vols_at_weight_0_quotes(tiny_surrogate: Path) -> None:
    # the vols were backed out of the weighted residual: a weight-0 quote got its market vol
    net = load_surrogate(tiny_surrogate)
    t = torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0, 1.0], dtype=torch.float64)
    k = torch.tensor([-0.1, 0.0, 0.1, -0.1, 0.0, 0.1], dtype=torch.float64)
    market = torch.full((6,), 0.3, dtype=torch.float64)
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    params, vols, _, _ = fit_with_surrogate(net, maturity=t, log_moneyness=k, market_iv=market,
                                            weight=weight, n_scan=16, max_iterations=3)  # fmt: skip
    fields = dict(zip(TRUE, params, strict=True))  # v0, kappa, theta, sigma, rho
    expected = implied_vol(net, maturity=t, log_moneyness=k, **fields)
    torch.testing.assert_close(vols, expected, rtol=1e-12, atol=0.0)


def test_the_surrogate_file_is_loaded_once_and_reloaded_when_rewritten(tmp_path: Path) -> None:
    path = save_surrogate(build_surrogate(HESTON_DOMAIN, hidden=(8,)), tmp_path / "model.pt")
    first = calibration_surrogate._surrogate(tmp_path)  # a run directory names its model.pt
    assert calibration_surrogate._surrogate(path) is first
    retrained = build_surrogate(HESTON_DOMAIN, hidden=(8,))
    torch.nn.init.constant_(retrained.mlp.head.weight, 0.25)
    save_surrogate(retrained, path)  # same path and size, a new file
    again = calibration_surrogate._surrogate(path)
    assert again is not first
    torch.testing.assert_close(again.mlp.head.weight, retrained.mlp.head.weight, rtol=0, atol=0)


def _recorded_starts(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The starts and options of each Levenberg-Marquardt run of the surrogate stage."""
    runs: list[dict] = []
    solve = calibration_surrogate.levenberg_marquardt

    def recorded(fn, x0, **options):
        runs.append({"x0": x0.clone(), **options})
        return solve(fn, x0, **options)

    monkeypatch.setattr(calibration_surrogate, "levenberg_marquardt", recorded)
    return runs


def _fit_six_quotes(surrogate: Path, x0: torch.Tensor, n_starts: int) -> None:
    """Two iterations of :func:`fit_with_surrogate` from ``x0`` on six exact quotes at TRUE."""
    net = load_surrogate(surrogate)
    t = torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0, 1.0], dtype=torch.float64)
    k = torch.tensor([-0.1, 0.0, 0.1, -0.1, 0.0, 0.1], dtype=torch.float64)
    iv = implied_vol(net, maturity=t, log_moneyness=k, **TRUE)
    fit_with_surrogate(net, maturity=t, log_moneyness=k, market_iv=iv,
                       weight=torch.ones(6, dtype=torch.float64), x0=x0, n_scan=64,
                       n_starts=n_starts, max_iterations=2)  # fmt: skip


def test_x0_always_races_and_the_scan_only_where_it_beats_it(
    tiny_surrogate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The best n_starts of x0 and the scan raced: two scan points beside the network's proposal
    # that beat them, or none; the proposal was dropped where two scan points beat it.
    runs = _recorded_starts(monkeypatch)
    exact = torch.tensor([list(TRUE.values())], dtype=torch.float64)  # cost 0: beats the scan
    corner = torch.tensor([[0.25, 5.0, 0.25, 1.0, 0.0]])  # far from the surface: the scan wins
    for x0 in (exact, corner):
        _fit_six_quotes(tiny_surrogate, x0, n_starts=3)
    assert [len(run["x0"]) for run in runs] == [1, 3]
    torch.testing.assert_close(runs[1]["x0"][0], corner[0].double(), rtol=0, atol=0)


def test_the_surrogate_stage_stops_sooner_where_a_polish_follows(
    tiny_surrogate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = _recorded_starts(monkeypatch)
    options = {"surrogate": tiny_surrogate, "n_scan": 64, "max_iterations": 3,
               "global_start": "scan"}  # fmt: skip
    calibrate("heston", _synthetic_surface(), method="surrogate", **options)
    quotes = _synthetic_surface()
    z = np.log(quotes["strike"] / quotes["forward"]) / (0.2 * np.sqrt(quotes["maturity"]))
    inside = quotes[np.abs(z) <= 2.5].reset_index(drop=True)
    calibrate("heston", inside, method="surrogate", polish=False, **options)
    assert [run["ftol"] for run in runs] == [calibration_surrogate.POLISHED_FTOL, 1e-6]


def test_surrogate_vols_in_the_box_are_implied_vol_with_nan_outside_the_domain(
    tiny_surrogate: Path,
) -> None:
    net = load_surrogate(tiny_surrogate)
    t = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    k = torch.tensor([0.3, 0.0, -0.2, 0.1], dtype=torch.float64)  # the first is outside
    params = torch.tensor([list(TRUE.values()), [0.02, 0.8, 0.1, 0.3, -0.2]], dtype=torch.float64)
    vols = calibration_surrogate._vols_in_box(net, t, k)(params.unsqueeze(1))  # (2, 4)
    expected = implied_vol(net, maturity=t, log_moneyness=k, out_of_domain="nan",
                           **dict(zip(TRUE, params.unsqueeze(1).unbind(-1), strict=True)))  # fmt: skip
    assert bool(torch.isnan(vols[:, 0]).all())
    torch.testing.assert_close(vols, expected, rtol=1e-15, atol=0.0, equal_nan=True)


def test_the_best_scan_point_races_beside_x0_rows_as_many_as_the_starts(
    tiny_surrogate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A caller's x0 beside the network's proposal (two rows, n_starts 2 with a proposal) left no
    # room for the scan: its best point never raced, however far both rows were from the surface.
    runs = _recorded_starts(monkeypatch)
    corners = torch.tensor([[0.25, 5.0, 0.25, 1.0, 0.0], [0.25, 0.5, 0.25, 0.1, 0.0]],
                           dtype=torch.float64)  # fmt: skip
    _fit_six_quotes(tiny_surrogate, corners, n_starts=2)
    assert len(runs[0]["x0"]) == 3
    torch.testing.assert_close(runs[0]["x0"][:2], corners, rtol=0, atol=0)


def test_the_polish_names_quotes_whose_vega_underflows_by_their_table_once(
    tiny_surrogate: Path,
) -> None:
    # calibrate_many said "quote table 1: table 0: 2 quote(s) too far out of the money": the
    # polish packs one table, which it named 0
    wings = pd.DataFrame({"strike": [70.0, 130.0], "maturity": 1 / (365 * 24), "forward": 100.0,
                          "discount": 1.0, "spot": 100.0, "implied_vol": 0.3})  # fmt: skip
    table = pd.concat([_synthetic_surface(), wings], ignore_index=True)
    with pytest.raises(ValueError, match=r"^quote table 1: 2 quote\(s\) too far out of the money"):
        calibrate_many("heston", [_synthetic_surface(), table], method="surrogate",
                       surrogate=tiny_surrogate, n_scan=16, n_starts=1, max_iterations=2,
                       global_start="scan")  # fmt: skip
