"""Calibration inputs: parameter names, bounds, starts, weights and SABR beta/shift settings are
checked before any fitting, and every error names the field."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from pricing.calibration import BOUND_TOLERANCE, bounds_reached, calibrate, calibrate_many
from pricing.quotes import QuoteError, QuoteWarning
from pricing.sabr import lognormal_vol

HESTON_X0 = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}


def _smile(shift: float = 0.0, maturity: float = 1.0) -> pd.DataFrame:
    strike = 100.0 * np.exp(np.linspace(-0.3, 0.3, 7))
    vol = lognormal_vol(forward=100.0, strike=torch.tensor(strike), maturity=maturity, alpha=0.3,
                        beta=1.0, rho=-0.3, nu=0.6, shift=shift).numpy()  # fmt: skip
    return pd.DataFrame({"strike": strike, "maturity": maturity, "forward": 100.0,
                         "discount": 1.0, "implied_vol": vol, "shift": shift})  # fmt: skip


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("sabr", {"bounds": {"vol": (0.1, 0.2)}}, r"sabr has no parameter 'vol'"),
        (
            "heston",
            {"bounds": {"v0": (0.2, 0.1)}},
            r"bounds\['v0'\]: lower 0.2 is not <= upper 0.1",
        ),
        ("sabr", {"bounds": {"rho": (math.nan, 0.0)}}, r"bounds\['rho'\]: lower nan"),
        # the Heston pricer (the reported vols) refuses theta = 0, where a fit may end
        ("heston", {"bounds": {"theta": (0.0, 1.0)}}, r"leaves theta.s domain \(0, inf\)"),
        ("sabr", {"bounds": {"rho": 0.5}}, r"bounds\['rho'\]: expected \(lower, upper\)"),
        ("heston", {"x0": {"v0": 0.04}}, r"x0: missing \['kappa', 'theta', 'sigma', 'rho'\]"),
        ("heston", {"x0": HESTON_X0 | {"lambda": 1.0}}, r"x0: unknown \['lambda'\]"),
        ("heston", {"x0": HESTON_X0 | {"v0": math.nan}}, r"x0\['v0'\]: must be a finite number"),
        ("sabr", {"x0": {"alpha": 0.3, "rho": 0.0}}, r"x0: missing \['nu'\].*beta optional"),
        ("heston", {"beta": 0.5}, r"SABR options; Heston has no beta"),
        ("heston", {"free_beta": True}, r"SABR options; Heston has no beta"),
        ("sabr", {"beta": math.nan}, r"beta: must be in \[0, 1\], got nan"),
        ("sabr", {"beta": 1.5}, r"beta: must be in \[0, 1\]"),
        # True was taken as beta = 1, fixed, by a caller who meant to fit it
        ("sabr", {"beta": True}, r"beta: must be a number in \[0, 1\], not a bool"),
        ("sabr", {"beta": 0.5, "free_beta": True}, r"fixes SABR beta and free_beta fits it"),
        ("sabr", {"beta": 0.5, "bounds": {"beta": (0.0, 1.0)}}, r"needs free_beta=True"),
        ("sabr", {"weights": np.zeros(7)}, r"weights are all zero"),
        # bounds and starts outside the model: the direct fit's trial points reached rho = -1
        ("sabr", {"bounds": {"rho": (-1.0, 1.0)}}, r"bounds\['rho'\].*rho's domain \(-1, 1\)"),
        ("sabr", {"bounds": {"nu": (-1.0, 5.0)}}, r"bounds\['nu'\].*nu's domain \[0, inf\)"),
        ("sabr", {"bounds": {"alpha": (0.0, 1.0)}}, r"alpha's domain \(0, inf\)"),
        ("heston", {"bounds": {"sigma": (0.0, 2.0)}}, r"sigma's domain \(0, inf\)"),
        ("sabr", {"x0": {"alpha": 0.3, "rho": 1.0, "nu": 0.5}}, r"x0\['rho'\]: 1 is outside"),
        # a start outside the caller's bounds was clipped into them without a word
        (
            "heston",
            {"x0": HESTON_X0 | {"rho": 0.9}, "bounds": {"rho": (-0.8, 0.5)}},
            r"x0\['rho'\]: 0.9 is outside bounds \[-0.8, 0.5\]",
        ),
        # method options of the wrong kind (n_starts=0 failed in a tensor op, -1 was taken,
        # "no" was a true free_beta, a string start failed inside torch)
        ("sabr", {"n_starts": 0}, r"n_starts must be a whole number >= 1, got 0"),
        ("heston", {"n_scan": -3}, r"n_scan must be a whole number >= 0"),
        ("sabr", {"free_beta": "no"}, r"free_beta must be True or False"),
        ("heston", {"polish": "no"}, r"polish must be True or False, got 'no'"),
        ("sabr", {"x0": {"alpha": "0.2", "rho": 0.0, "nu": 0.5}}, r"x0\['alpha'\]: must be a"),
        # options a method does not take reached its fitter as a TypeError (unexpected keyword)
        (
            "sabr",
            {"foo": 1},
            r"method 'direct' for sabr takes no option 'foo'; its options: free_beta, "
            r"max_iterations, n_starts \(and device\)",
        ),
        ("sabr", {"polish": True}, r"method 'direct' for sabr takes no option 'polish'"),
        ("heston", {"n_scan": 16, "nodes": 32, "polishh": True}, r"did you mean 'polish' for"),
        ("heston", {"free_beta": False}, r"SABR options; Heston has no beta"),
        # torch's manual_seed refused them deep inside the fit; True started at v0 = 1
        ("heston", {"seed": "1"}, r"seed must be a whole number, got '1'"),
        ("heston", {"seed": 1.5}, r"seed must be a whole number, got 1.5"),
        (
            "heston",
            {"x0": HESTON_X0 | {"v0": True}},
            r"x0\['v0'\]: must be a finite number, got True",
        ),
        # a start's beta was clipped to the fixed beta without a word
        (
            "sabr",
            {"x0": {"alpha": 0.3, "beta": 0.5, "rho": 0.0, "nu": 0.5}},
            r"x0\['beta'\]: 0.5 differs from the fixed beta 1",
        ),
        # a device that is no device (torch's own error came from deep inside the fit)
        ("heston", {"device": "nonsense"}, r"device must be a torch device .* got 'nonsense'"),
        ("heston", {"device": 0}, r"device must be a torch device .* got 0"),
        ("heston", {"device": "meta"}, r"device: calibration runs in float64 on 'cpu' or 'cuda'"),
        ("sabr", {"device": "cuda:x"}, r"device must be a torch device .* got 'cuda:x'"),
    ],
)
def test_bad_settings_are_rejected_naming_the_field(model: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate(model, _smile(), **kwargs)
    if "weights" not in kwargs:  # calibrate_many checks them once for every table
        with pytest.raises(ValueError, match=message):
            calibrate_many(model, [_smile(), _smile()], **kwargs)


@pytest.mark.parametrize(
    ("model", "method", "options", "message"),
    [
        (
            "heston",
            "quantlib",
            {"n_scan": 64},
            r"takes no option 'n_scan'; its options: "
            r"integration_order, max_iterations, tolerance",
        ),
        # passed on to QuantLib, which read the whole days to each expiry as weeks: v0 = 1,186
        ("heston", "quantlib", {"period_unit": "weeks"}, r"takes no option 'period_unit'"),
        ("heston", "quantlib", {"tolerance": "1e-8"}, r"tolerance must be a finite number > 0"),
        ("heston", "quantlib", {"integration_order": 0}, r"integration_order must be a whole"),
        ("sabr", "quantlib", {"max_iteration": 5}, r"did you mean 'max_iterations' for"),
    ],
)
def test_other_methods_check_their_options_by_name(
    model: str, method: str, options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate(model, _smile(), method=method, **options)
    with pytest.raises(ValueError, match=message):
        calibrate_many(model, [_smile(), _smile()], method=method, **options)


@pytest.mark.parametrize("field", ["bounds", "x0"])
def test_bounds_and_x0_must_be_mappings(field: str) -> None:
    # a list of bounds raised AttributeError; a list of starts was read as unknown names
    with pytest.raises(
        TypeError, match=rf"{field}: expected a mapping of parameter names, got list"
    ):
        calibrate("sabr", _smile(), **{field: [(0.1, 0.5), 0.0, 0.5]})


@pytest.mark.parametrize(
    ("model", "method", "x0", "message"),
    [
        (
            "heston",
            "direct",
            HESTON_X0 | {"kappa": 80.0},
            r"x0\['kappa'\]: 80 is outside the box \[0.001, 50\] of heston 'direct'; pass "
            r"bounds=\{'kappa': \(0.001, 80.0\)\} to widen it",
        ),
        (
            "sabr",
            "direct",
            {"alpha": 0.3, "rho": -0.3, "nu": 15.0},
            r"x0\['nu'\]: 15 is outside the box \[1e-08, 10\] of sabr 'direct'; pass "
            r"bounds=\{'nu': \(1e-08, 15.0\)\}",
        ),
        (
            "sabr",
            "quantlib",
            {"alpha": 0.3, "rho": -0.99995, "nu": 0.6},
            r"x0\['rho'\]: -0.99995 is outside the box \[-0.9999, 0.9999\] of sabr 'quantlib'",
        ),
        # alpha's box: a thousandth to a thousand times the ATM vol (0.3)
        ("sabr", "direct", {"alpha": 1e-6, "rho": -0.3, "nu": 0.6}, r"x0\['alpha'\]: 1e-06 is"),
    ],
)
def test_a_start_outside_the_default_box_is_refused_saying_how_to_widen_it(
    model: str, method: str, x0: dict, message: str
) -> None:
    # only a start outside the caller's bounds was refused: one outside the default box was
    # clipped into it without a word (kappa 80 started at 50); scipy's least_squares refuses it
    with pytest.raises(ValueError, match=message):
        calibrate(model, _smile(), method=method, x0=x0)
    with pytest.raises(ValueError, match=message):
        calibrate_many(model, [_smile(), _smile()], method=method, x0=x0)


def test_bounds_that_take_the_start_in_start_the_fit_there() -> None:
    # one evaluation, no step: the fit's parameters are its start, unclipped (scipy moves a
    # start on a bound inside by a hair, so the SABR box reaches past it)
    heston = calibrate("heston", _smile(), x0=HESTON_X0 | {"kappa": 80.0},
                       bounds={"kappa": (1e-3, 80.0)}, n_scan=0, max_iterations=1,
                       global_start="scan", polish=False)  # fmt: skip
    assert heston.params["kappa"] == 80.0
    sabr = calibrate("sabr", _smile(), method="quantlib", x0={"alpha": 0.3, "rho": -0.3,
                     "nu": 15.0}, bounds={"nu": (1e-8, 20.0)}, max_iterations=1)  # fmt: skip
    assert sabr.params["nu"] == [15.0]


def test_x0_may_give_the_fixed_beta_or_a_free_one() -> None:
    start = {"alpha": 0.3, "rho": -0.3, "nu": 0.6}
    assert calibrate("sabr", _smile(), x0=start | {"beta": 1.0}).rmse_iv_bp < 1e-6
    fit = calibrate("sabr", _smile(), x0=start | {"beta": 0.5}, free_beta=True,
                    bounds={"beta": (0.4, 1.0)})  # fmt: skip
    assert fit.rmse_iv_bp < 1.0


def test_calibrate_many_names_the_table_whose_fit_fails() -> None:
    # the SABR fitters take one table at a time: the error of the second did not say which
    split = pd.concat([_smile(), _smile().assign(forward=110.0)], ignore_index=True)
    prepared = split.assign(market_iv=split["implied_vol"], option_type="call")  # SABR's check
    for method in ("direct", "quantlib"):
        for table, found in ((split, "one expiry has one forward"), (prepared, "forward varies")):
            with pytest.raises(QuoteError, match=rf"quote table 1: column 'forward'.*{found}"):
                calibrate_many("sabr", [_smile(), table], method=method)


def test_calibrate_warns_what_it_assumed_of_a_table_it_prepares() -> None:
    # a spot without rate or dividend columns, carried at 0: qfnet's report and notes said so,
    # calibrate on the table itself gave no word
    table = _smile().drop(columns=["forward", "discount"]).assign(spot=100.0)
    note = r"no rate or dividend column: 1 expiry without call/put pairs took its forward"
    with pytest.warns(QuoteWarning, match=rf"^{note}"):
        calibrate("sabr", table)
    with pytest.warns(QuoteWarning, match=rf"^quote table 1: {note}"):
        calibrate_many("sabr", [_smile(), table])
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuoteWarning)
        calibrate("sabr", _smile())  # its own forward and discount: nothing assumed


def test_sabr_accepts_x0_without_beta_and_beta_bounds_with_free_beta() -> None:
    fit = calibrate("sabr", _smile(), x0={"alpha": 0.3, "rho": -0.3, "nu": 0.6})
    assert fit.params["nu"][0] == pytest.approx(0.6, rel=1e-7)
    fit = calibrate("sabr", _smile(), free_beta=True, bounds={"beta": (0.9, 1.0)})
    assert 0.9 <= fit.params["beta"][0] <= 1.0


def test_quantlib_sabr_keeps_to_the_bounds_and_quantlib_heston_refuses_them() -> None:
    # The smile's nu is 0.6: a box of [1, 2] must hold the reference fit at its edge.
    fit = calibrate("sabr", _smile(), method="quantlib", bounds={"nu": (1.0, 2.0)})
    assert fit.params["nu"][0] == pytest.approx(1.0, abs=1e-9)
    direct = calibrate("sabr", _smile(), bounds={"nu": (1.0, 2.0)})
    assert direct.rmse_iv_bp == pytest.approx(fit.rmse_iv_bp, rel=1e-5)
    with pytest.raises(ValueError, match=r"method 'quantlib' takes no bounds"):
        calibrate("heston", _smile(), method="quantlib", bounds={"v0": (0.01, 0.2)})


def test_sabr_shift_must_be_one_per_expiry() -> None:
    table = _smile(shift=5.0)
    table.loc[3, "shift"] = math.nan  # an empty shift is 0: not the expiry's 5
    with pytest.raises(QuoteError, match=r"column 'shift'.*T=1: shift varies within the smile"):
        calibrate("sabr", table)
    two = pd.concat([_smile(shift=5.0), _smile(shift=0.0, maturity=2.0)], ignore_index=True)
    assert calibrate("sabr", two).params["shift"] == [5.0, 0.0]


@pytest.mark.parametrize("method", ["direct", "quantlib"])
def test_heston_refuses_shifted_lognormal_quotes(method: str) -> None:
    # fitted as lognormal vols of the unshifted strikes without a word (24 bp on an exact shifted
    # smile); a strike at or below 0 failed in the pricer at a padded index, or in QuantLib
    negative = _smile(shift=0.02).assign(strike=lambda t: t["strike"] / 1e4 - 0.01, forward=0.0)
    for shifted in (_smile(shift=0.02), negative):
        with pytest.raises(QuoteError, match=r"column 'shift': Heston fits lognormal vols"):
            calibrate("heston", shifted, method=method)
    with pytest.raises(QuoteError, match=r"quote table 1: column 'shift'"):
        calibrate_many("heston", [_smile(), _smile(shift=0.02)], method=method)
    assert calibrate("heston", _smile(shift=0.0), method="quantlib").n_quotes == 7  # shift 0


def test_sabr_forward_must_be_one_per_expiry() -> None:
    # two smiles under one maturity (forwards 100 and 110) were fitted as one at their average
    # forward 105, which no quote has: 32 bp RMSE, converged, without a word
    table = pd.concat([_smile(), _smile().assign(forward=110.0)], ignore_index=True)
    prepared = table.assign(market_iv=table["implied_vol"], option_type="call")
    for method in ("direct", "quantlib"):
        with pytest.raises(QuoteError, match=r"column 'forward'.*T=1: forward varies within"):
            calibrate("sabr", prepared, method=method)
        # a table calibrate prepares is refused there, naming the rows (parity_forwards)
        with pytest.raises(QuoteError, match=r"forward 100 at row 1 and 110 at row 8: one"):
            calibrate("sabr", table, method=method)
    # forwards equal to rounding (one curve, maturities equal to 10 digits) are one smile
    near = _smile().assign(forward=100.0 * (1 + 1e-13 * np.arange(7)))
    assert calibrate("sabr", near).params["forward"] == [pytest.approx(100.0, rel=1e-12)]


@pytest.mark.parametrize("method", ["direct", "quantlib"])
def test_sabr_fits_forwards_within_rounding_at_their_mean(method: str) -> None:
    # Regression: 100.0 beside 100.04 (within FORWARD_ROUNDING, 0.05%) passed the quote check,
    # each row kept its own, and SABR's own check (1e-9) refused them: "forward varies"
    near = _smile().assign(forward=[100.0, 100.04] * 3 + [100.0])
    fit = calibrate("sabr", near, method=method)
    assert fit.params["forward"] == [pytest.approx(near["forward"].mean(), rel=1e-12)]
    assert fit.rmse_iv_bp < 5.0  # the vols are those of forward 100: 0.04% off it
    # beyond the rounding, two smiles: refused (a prepared table reaches SABR's own check)
    apart = _smile().assign(forward=[100.0, 100.06] * 3 + [100.0])
    prepared = apart.assign(market_iv=apart["implied_vol"], option_type="call")
    with pytest.raises(QuoteError, match=r"forward varies within the smile \(100 to 100.06\)"):
        calibrate("sabr", prepared, method=method)


def test_editing_implied_vol_after_cleaning_is_what_gets_fitted() -> None:
    from pricing.quote_cleaning import clean_quotes

    clean, _ = clean_quotes(_smile())
    shifted = clean.assign(implied_vol=clean["implied_vol"] + 0.01)  # market_iv still the old one
    fit, moved = calibrate("sabr", clean), calibrate("sabr", shifted)
    np.testing.assert_allclose(moved.residuals["market_iv"], shifted["implied_vol"], rtol=0,
                               atol=1e-15)  # fmt: skip
    assert abs(moved.params["alpha"][0] - fit.params["alpha"][0]) > 1e-3


def test_an_expiry_without_weight_is_a_clear_error_for_both_sabr_methods() -> None:
    # the direct fit died inside the solver (NaN alpha); quantlib returned its start as converged
    table = pd.concat([_smile(), _smile(maturity=2.0)], ignore_index=True)
    weights = np.where(table["maturity"] == 2.0, 0.0, 1.0)
    for method in ("direct", "quantlib"):
        with pytest.raises(QuoteError, match=r"column 'weight'.*T=2: every quote has weight 0"):
            calibrate("sabr", table, method=method, weights=weights)


def test_sabr_vega_weights_are_shifted_black_vegas() -> None:
    # Shifted quotes below zero: the unshifted vega was NaN ("weights are all zero").
    table = _smile(shift=0.03).assign(strike=lambda t: t["strike"] / 1e4 - 0.012,
                                      forward=100.0 / 1e4 - 0.012)  # fmt: skip
    from pricing.black_scholes import black_price
    from pricing.calibration import quote_weights

    vol = torch.tensor(table["implied_vol"].to_numpy(), requires_grad=True)
    price = black_price(forward=torch.tensor(table["forward"].to_numpy() + 0.03),
                        strike=torch.tensor(table["strike"].to_numpy() + 0.03), maturity=1.0,
                        volatility=vol)  # fmt: skip
    (vega,) = torch.autograd.grad(price.sum(), vol)
    weights = quote_weights(table.assign(market_iv=table["implied_vol"]), "vega")
    np.testing.assert_allclose(weights, (vega / vega.mean()).numpy(), rtol=1e-10, atol=0)


def test_quantlib_sabr_model_vols_are_finite_at_zero_weight_and_match_direct() -> None:
    # model vols were rebuilt as residual / sqrt(weight) + market: 0 / 0 at weight 0
    weights = np.array([0.0, 1, 1, 1, 1, 1, 1])
    ours = calibrate("sabr", _smile(), weights=weights)
    reference = calibrate("sabr", _smile(), method="quantlib", weights=weights)
    assert np.isfinite(reference.rmse_iv_bp)
    np.testing.assert_allclose(reference.residuals["model_iv"], ours.residuals["model_iv"],
                               rtol=0, atol=1e-8)  # fmt: skip


@pytest.mark.parametrize("many", [False, True])
def test_fit_statistics_leave_out_quotes_of_weight_0(many: bool) -> None:
    # A 500 bp outlier weighted 0 (left out of the fit) counted in the summary: an exact fit of
    # the other 6 quotes reported an RMSE of 189 bp, a largest error of 500 bp, and 7 quotes used
    table = _smile()
    table.loc[3, "implied_vol"] += 0.05
    weights = np.where(table.index == 3, 0.0, 1.0)
    fit = (
        calibrate_many("sabr", [table], weights=weights)[0]
        if many
        else calibrate("sabr", table, weights=weights)
    )
    assert fit.n_quotes == 6 and fit.n_dropped == 0
    assert fit.rmse_iv_bp < 1e-4 and fit.max_abs_iv_bp < 1e-4 and fit.sse < 1e-12
    # the residual table still lists every quote, the outlier with its weight and its error
    assert len(fit.residuals) == 7
    assert fit.residuals["weight"].tolist()[3] == 0.0
    np.testing.assert_allclose(fit.residuals["error_bp"][3], -500.0, rtol=1e-6)


def test_quantlib_sabr_takes_x0_and_max_iterations_and_refuses_other_options() -> None:
    truth = {"alpha": 0.3, "rho": -0.3, "nu": 0.6}  # the smile's parameters (beta 1)
    started = calibrate("sabr", _smile(), method="quantlib", x0=truth, max_iterations=1)
    cold = calibrate("sabr", _smile(), method="quantlib", max_iterations=1)
    assert started.rmse_iv_bp < 1e-6 and cold.rmse_iv_bp > 1e-3 and not cold.converged
    with pytest.raises(ValueError, match=r"takes no option 'n_starts'"):
        calibrate("sabr", _smile(), method="quantlib", n_starts=3)


def test_free_beta_fits_keep_to_alpha_bounds_like_the_reference() -> None:
    # alpha's bounds were applied at beta = 1 to a/(F^(1 - beta)): alpha 1.26 for a box of 0.5
    table = _smile().assign(
        implied_vol=lognormal_vol(forward=100.0, strike=torch.tensor(_smile()["strike"]),
                                  maturity=1.0, alpha=2.0, beta=0.5, rho=-0.3,
                                  nu=0.6).numpy())  # fmt: skip
    bounds = {"alpha": (0.1, 0.5), "beta": (0.4, 0.6)}
    ours = calibrate("sabr", table, free_beta=True, bounds=bounds)
    reference = calibrate("sabr", table, method="quantlib", free_beta=True, bounds=bounds)
    assert 0.1 <= ours.params["alpha"][0] <= 0.5
    assert ours.rmse_iv_bp <= reference.rmse_iv_bp * (1 + 1e-6)


def test_sabr_expiries_fit_alike_whatever_their_share_of_the_weights() -> None:
    # Weights are normalised over the table, tolerances are absolute: an expiry weighted 1e-12
    # of the other stopped at 5.8 bp (reported converged); each smile's weights now have mean 1.
    table = pd.concat([_smile(), _smile(maturity=2.0)], ignore_index=True)
    light = np.where(table["maturity"] == 2.0, 1e-12, 1.0)
    for method in ("direct", "quantlib"):
        fit = calibrate("sabr", table, method=method, weights=light)
        errors = fit.residuals.loc[table["maturity"] == 2.0, "error_bp"].abs()
        assert fit.converged and errors.max() < 1e-6, (method, errors.max())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"market_iv": lambda t: t["market_iv"] * 100}, r"row 1, column 'market_iv'.*decimals"),
        ({"market_iv": lambda t: t["market_iv"].where(t.index != 2, np.inf)}, r"row 3.*got inf"),
        ({"option_type": "xyz"}, r"column 'option_type': must be 'call' or 'put'"),
    ],
)
def test_a_prepared_looking_table_is_still_checked(change, message) -> None:
    # a table with forward, discount, market_iv and option_type skipped read_quotes: vols in
    # percent were fitted (9,693 bp), an option type 'xyz' accepted
    from pricing.quote_cleaning import clean_quotes

    prepared, _ = clean_quotes(_smile())
    with pytest.raises(QuoteError, match=message):
        calibrate("sabr", prepared.drop(columns="implied_vol").assign(**change))


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("maturity", 0.0),
        ("discount", -1.0),
        ("strike", -5.0),
        ("forward", math.inf),
        ("shift", math.inf),
    ],
)
def test_a_prepared_looking_table_names_the_row_of_a_value_out_of_its_domain(
    column: str, value: float
) -> None:
    # such tables skipped read_quotes' checks: SABR 'quantlib' fitted a maturity of 0 as a smile
    # of its own, a discount of -1 was kept, and the pricer named a negative strike by its
    # place in the padded batch of smiles ("at index (0, 1)"), scipy an infinite forward by
    # "Residuals are not finite in the initial point"; an infinite shift "varied within the smile"
    from pricing.quote_cleaning import clean_quotes

    prepared, _ = clean_quotes(_smile())
    prepared = prepared.drop(columns="implied_vol").astype({column: float})
    good = prepared.copy()
    prepared.loc[2, column] = value
    message = rf"row 3, column '{column}': must be finite"
    for method in ("direct", "quantlib"):
        with pytest.raises(QuoteError, match=message):
            calibrate("sabr", prepared, method=method)
    with pytest.raises(QuoteError, match=rf"quote table 1: {message}"):
        calibrate_many("sabr", [good, prepared])


def test_an_infinite_upper_bound_is_no_bound() -> None:
    # (0, inf) was refused as leaving nu's domain [0, inf) (as kappa's (0.1, inf) was)
    fit = calibrate("sabr", _smile(), bounds={"nu": (0.0, math.inf)})
    assert fit.params["nu"][0] == pytest.approx(0.6, rel=1e-6)


def test_bounds_reached_names_the_side_within_its_tolerance_and_skips_fixed_parameters() -> None:
    names = ["v0", "kappa", "theta", "sigma", "rho"]
    lower = np.array([1e-5, 1e-3, 1e-5, 1e-3, -0.999])
    upper = np.array([4.0, 50.0, 4.0, 10.0, 0.999])
    width = upper - lower
    inside = np.array([0.04, 1.5, 0.05, 0.5, -0.7])
    assert bounds_reached(names, inside, lower, upper) == {}
    near = inside.copy()
    near[1] = upper[1] - 0.5 * BOUND_TOLERANCE * width[1]  # within the tolerance: on it
    near[4] = lower[4] + 2.0 * BOUND_TOLERANCE * width[4]  # beyond it: inside
    near[0] = lower[0]
    assert bounds_reached(names, near, lower, upper) == {"kappa": "upper", "v0": "lower"}
    # a fixed parameter (SABR's beta) is not fitted; an unbounded side is no bound
    assert bounds_reached(["beta", "nu"], np.array([0.5, 1e6]), np.array([0.5, 1e-8]),
                          np.array([0.5, np.inf])) == {}  # fmt: skip
    per_expiry = bounds_reached(["alpha", "nu"], np.array([[1e-8, 0.4], [0.2, 10.0]]),
                                np.array([1e-8, 1e-8]), np.array([np.inf, 10.0]))  # fmt: skip
    assert per_expiry == {"alpha": ["lower", None], "nu": [None, "upper"]}


def test_heston_warns_where_fewer_weighted_quotes_than_free_parameters() -> None:
    # four quotes for five parameters: one of many exact fits came back "converged", unsaid
    four = pd.DataFrame({"strike": [80.0, 95.0, 105.0, 120.0], "maturity": 0.5, "forward": 100.0,
                         "discount": 1.0,
                         "implied_vol": [0.28, 0.22, 0.2, 0.21]})  # fmt: skip
    options = {"global_start": "scan", "n_scan": 16, "n_starts": 1}
    with pytest.warns(UserWarning, match="4 weighted quotes for 5 free parameters"):
        calibrate("heston", four, **options)
    with pytest.warns(UserWarning, match="quote table 1: 4 weighted quotes for 5 free"):
        calibrate_many("heston", [pd.concat([four, four.assign(maturity=1.0)]), four], **options)
    # one parameter held by equal bounds leaves four free: identified
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        calibrate("heston", four, bounds={"rho": (-0.5, -0.5)}, **options)


@pytest.mark.parametrize("column", ["strike", "market_iv"])
def test_a_repeated_needed_column_is_named(column: str) -> None:
    # a prepared table with two strike (or market_iv) columns failed in numpy ("operands could
    # not be broadcast together with shapes (7,2) (7,)"), naming no column
    from pricing.quote_cleaning import clean_quotes

    prepared, _ = clean_quotes(_smile())
    table = pd.concat([prepared, prepared[[column]] * 1.1], axis=1)
    for model in ("sabr", "heston"):
        with pytest.raises(QuoteError, match=rf"columns '{column}' and '{column}'"):
            calibrate(model, table)
