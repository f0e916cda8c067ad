"""Tests of the Heston calibration network (issue 6, part 3)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pricing.calibration import CalibrationProblem, calibrate, calibrate_many, proposed_starts
from qfnet.calibration_network import (
    BOX,
    MATURITIES,
    NAMES,
    CalibrationNetwork,
    accuracy,
    default_path,
    grid_surfaces,
    load_network,
    make_dataset,
    predict,
    sample_parameters,
    save_network,
    surface_from_quotes,
    surface_vols,
    train_network,
)
from qfnet.calibration_network_method import _narrow_expiries, _network

# Shipped network: all five parameters within 5% of the truth on 92% of the 300 fresh surfaces of
# the test below (90.9% on the benchmark's 1,000); asserted with some slack.
SHIPPED_BAR = 0.85


@pytest.fixture(scope="module")
def tiny() -> tuple:
    torch.manual_seed(0)
    params, vols = make_dataset(768, seed=3)
    net = train_network(params, vols, hidden=(32, 32), max_epochs=30, batch_size=64, seed=0)
    test_params, test_vols = make_dataset(128, seed=99)
    return net, test_params, test_vols


def _unit_error(params: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    lower = torch.tensor([BOX[n][0] for n in NAMES], dtype=torch.float64)
    upper = torch.tensor([BOX[n][1] for n in NAMES], dtype=torch.float64)
    return ((params - truth) / (upper - lower)).abs().mean(dim=0)  # (5,)


def test_tiny_network_beats_box_midpoint_on_held_out_surfaces(tiny: tuple) -> None:
    net, truth, vols = tiny
    predicted = torch.stack(list(predict(net, vols).values()), dim=1)
    midpoint = torch.tensor([sum(BOX[n]) / 2 for n in NAMES], dtype=torch.float64).expand_as(truth)
    network_error, midpoint_error = _unit_error(predicted, truth), _unit_error(midpoint, truth)
    # Mean absolute error in box units (the midpoint's is about 0.25): at most 0.6 times the
    # midpoint's on average over the five parameters and for each of the well-identified v0,
    # theta and rho (measured: about 0.4, 0.15, 0.15 and 0.45 times).
    assert network_error.mean() <= 0.6 * midpoint_error.mean()
    for i in (NAMES.index("v0"), NAMES.index("theta"), NAMES.index("rho")):
        assert network_error[i] <= 0.6 * midpoint_error[i], NAMES[i]


def test_save_load_round_trip_gives_identical_outputs(tiny: tuple, tmp_path) -> None:
    net, _, vols = tiny
    path = tmp_path / "net.pt"
    save_network(net, path, note="test")
    loaded = load_network(path)
    assert loaded.metadata["note"] == "test"
    assert loaded.metadata["grid"]["maturities"][-1] == 3.0
    before, after = predict(net, vols), predict(loaded, vols)
    for name in NAMES:
        torch.testing.assert_close(after[name], before[name], rtol=0.0, atol=0.0)


def test_a_run_directory_holds_the_events_and_the_trained_network(tmp_path) -> None:
    # the run had no TensorBoard events (tensorboard=False) and no model.pt to load: the
    # trained network was only in memory, its weights in a training checkpoint
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    params, vols = make_dataset(48, seed=5)
    net = train_network(params, vols, hidden=(8,), max_epochs=2, batch_size=16, seed=0,
                        run_dir=tmp_path)  # fmt: skip
    names = {p.name.split(".")[0] for p in tmp_path.iterdir()}
    assert {"config", "metrics", "checkpoints", "loss", "events", "model"} <= names
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "epoch/val_loss" in events.Tags()["scalars"]
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == {"state_dict", "metadata"}
    loaded = load_network(tmp_path / "model.pt")
    assert loaded.metadata["training"]["epochs"] == 2
    surfaces = vols[:3]
    for name, value in predict(loaded, surfaces).items():
        torch.testing.assert_close(value, predict(net, surfaces)[name], rtol=0.0, atol=0.0)


def test_network_method_reuses_a_loaded_file_until_it_is_rewritten(tiny: tuple, tmp_path) -> None:
    net, _, _ = tiny
    path = tmp_path / "net.pt"
    save_network(net, path, note="first")
    first = _network(path)
    assert _network(path) is first  # no reload per calibration
    save_network(net, path, note="second")
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))  # a new modification time, even on coarse clocks
    assert _network(path).metadata["note"] == "second"


def test_load_refuses_a_file_that_is_not_a_network(tmp_path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}, "metadata": '{"format": "something else"}'}, path)
    with pytest.raises(ValueError, match="not a Heston calibration network"):
        load_network(path)


def _edited(metadata: dict, **changes) -> dict:
    return {**metadata, **changes}


@pytest.mark.parametrize(
    ("damage", "message"),
    [(lambda data, payload: data[:300], r"is not a readable calibration network: truncated"),
     (lambda data, payload: {"weights": torch.zeros(2)}, r"not a Heston calibration network "
      r"\(no 'metadata' field\)"),
     (lambda data, payload: {**payload, "metadata": payload["metadata"][:40]},
      r"field 'metadata' is not valid JSON"),
     (lambda data, payload: {**payload, "metadata": json.dumps(
         {k: v for k, v in json.loads(payload["metadata"]).items() if k != "architecture"})},
      r"is a damaged Heston calibration network: no field 'architecture'$"),
     (lambda data, payload: {**payload, "metadata": json.dumps(_edited(
         json.loads(payload["metadata"]), grid={"maturities": [1.0], "z": [0.0]}))},
      r"field 'grid' is not this qfnet's grid"),
     (lambda data, payload: {**payload, "metadata": json.dumps(_edited(
         json.loads(payload["metadata"]), names=["rho", "v0", "kappa", "theta", "sigma"]))},
      r"field 'names' is \['rho', 'v0'")],
    ids=["cut", "foreign", "cut_metadata", "no_architecture", "other_grid", "other_order"],
)  # fmt: skip
def test_load_names_a_damaged_or_foreign_file_and_its_field(tmp_path, damage, message) -> None:
    # torch's RuntimeError, KeyError 'metadata' or a JSONDecodeError named no file; a network of
    # another grid or parameter order loaded and read this grid's vols as its own
    path = tmp_path / "net.pt"
    save_network(CalibrationNetwork(hidden=(8,)), path)
    damaged = damage(path.read_bytes(), torch.load(path, weights_only=True))
    if isinstance(damaged, bytes):
        path.write_bytes(damaged)
    else:
        torch.save(damaged, path)
    with pytest.raises(ValueError, match=message):
        load_network(path)


def _saved_network(tmp_path: Path) -> tuple[Path, dict]:
    """A small network saved to ``tmp_path / "net.pt"``, and the payload read back from it."""
    path = tmp_path / "net.pt"
    save_network(CalibrationNetwork(hidden=(8,)), path)
    return path, torch.load(path, weights_only=True)


def _with_metadata(payload: dict, **changes) -> dict:
    return {**payload, "metadata": json.dumps(_edited(json.loads(payload["metadata"]), **changes))}


@pytest.mark.parametrize(
    ("damage", "message"),
    [(lambda box, state: box.update(v0=[0.25, 0.01]), r"field 'box' 'v0' must be \[low, high\], "
      r"finite numbers with low < high, got \[0\.25, 0\.01\]"),
     (lambda box, state: box.update(kappa=[math.nan, 5.0]), r"field 'box' 'kappa' must be"),
     (lambda box, state: box.update(rho=[-0.5, -0.5]), r"field 'box' 'rho' must be"),
     (lambda box, state: box.update(sigma=[0.1, 1.0, 2.0]), r"field 'box' 'sigma' must be"),
     (lambda box, state: box.update(nu=[0.1, 1.0]), r"field 'box' must bound exactly \['v0'"),
     (lambda box, state: box.update(v0=[0.01, 0.5]), r"field 'box' is not the weights' bounds"),
     (lambda box, state: (state["lower"].__setitem__(0, 0.25), state["upper"].__setitem__(0, 0.01)),
      r"field 'box' is not the weights' bounds \(state_dict lower \[0\.25, ")],
    ids=["inverted", "nan", "empty", "three", "extra_name", "not_the_weights", "weights_inverted"],
)  # fmt: skip
def test_load_refuses_a_box_that_is_not_finite_increasing_and_the_weights(
    tmp_path, damage, message
) -> None:
    # an inverted, NaN or edited box loaded without a word (the metadata's box is replaced by
    # the state_dict's bounds: it then lied); inverted bounds in the weights mirrored every
    # answer in its box (v0 0.1293 for 0.1307)
    from qfnet.training.checkpoint import ModelFileError

    path, payload = _saved_network(tmp_path)
    box = json.loads(payload["metadata"])["box"]
    damage(box, payload["state_dict"])
    torch.save(_with_metadata(payload, box=box), path)
    with pytest.raises(ModelFileError, match=message):
        load_network(path)


@pytest.mark.parametrize(
    ("name", "value"),
    [("input_std", 0.0), ("input_std", math.nan), ("input_std", -0.1), ("input_mean", math.inf)],
)
def test_load_refuses_an_input_scaler_that_is_not_finite_or_not_positive(
    tmp_path, name, value
) -> None:
    # every parameter predicted was NaN, without a word
    path, payload = _saved_network(tmp_path)
    payload["state_dict"][name][3] = value
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"state_dict 'input_mean' and 'input_std' must be "
                       r"finite, the std > 0$"):  # fmt: skip
        load_network(path)


def test_load_refuses_a_grid_of_another_log_moneyness_scale(tmp_path) -> None:
    # the grid's maturities and z were checked, their map to log-moneyness was not
    path, payload = _saved_network(tmp_path)
    grid = json.loads(payload["metadata"])["grid"]
    assert grid["log_moneyness"] == "z*0.2*sqrt(T)"  # what it writes
    torch.save(_with_metadata(payload, grid={**grid, "log_moneyness": "z*0.1*sqrt(T)"}), path)
    with pytest.raises(ValueError, match=r"field 'grid' is not this qfnet's grid .*log-moneyness "
                       r"z\*0\.2\*sqrt\(T\)"):  # fmt: skip
        load_network(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [("cut", r"is not a readable calibration network: truncated"),
     ("no_state_dict", r"is a damaged Heston calibration network: no field 'state_dict'$"),
     ("missing_weight", r"is a damaged Heston calibration network: Error\(s\) in loading "
      r"state_dict for CalibrationNetwork: Missing key\(s\) in state_dict: \"lower\"\.$"),
     ("directory", r"is a directory, not a calibration network file$")],
)  # fmt: skip
def test_every_damaged_network_file_is_a_model_file_error_naming_it(
    tmp_path, damage_model_file, damage, message
) -> None:
    # qfnet calibrate told a damaged network's error from the quotes' by whether its message
    # began with the name of a file; a directory in the file's place was "no calibration network
    # at ..." (and the global start of 'direct' fell back to the scan without a word); a missing
    # field read "KeyError('state_dict')", torch's mismatch "RuntimeError('...\\n\\t...')"
    from qfnet.training.checkpoint import ModelFileError

    path, _ = _saved_network(tmp_path)
    damage_model_file(path, damage, weight="lower")
    with pytest.raises(ModelFileError, match=message) as caught:
        load_network(path)
    assert caught.value.path == path and str(caught.value).startswith(f"{path} ")


def test_load_refuses_a_network_file_with_a_damaged_byte(tmp_path) -> None:
    # torch.load checks no CRC: a flipped bit in a weight loaded as another weight, silently
    net = CalibrationNetwork(hidden=(8,))
    net.input_mean.fill_(1234.5678)
    path = tmp_path / "net.pt"
    save_network(net, path)
    data = bytearray(path.read_bytes())
    data[bytes(data).index(net.input_mean.numpy().tobytes()) + 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"net\.pt is not a readable calibration network: .*CRC"):
        load_network(path)


def test_shipped_network_within_five_percent() -> None:
    net = load_network()
    params, vols = make_dataset(300, seed=2024)
    scores = accuracy(net, params, vols)
    assert scores["all_within_5pct"] >= SHIPPED_BAR, scores


def test_shipped_network_metadata_is_plain_json() -> None:
    payload = torch.load(default_path(), weights_only=True)
    assert isinstance(payload["metadata"], str)
    assert default_path().stat().st_size < 1_000_000


def _synthetic_quotes(
    truth: dict[str, float], expiries: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0)
) -> pd.DataFrame:
    maturity = np.repeat(expiries, 9)
    z = np.tile(np.linspace(-2.0, 2.0, 9), len(expiries))
    forward = 100.0
    strike = forward * np.exp(z * 0.2 * np.sqrt(maturity))
    from pricing.black_scholes import black_implied_vol
    from pricing.heston import price as heston_price

    ratio, t = torch.tensor(strike / forward), torch.tensor(maturity)
    prices = heston_price(forward=1.0, strike=ratio, maturity=t, is_call=ratio >= 1, **truth)
    vols = black_implied_vol(price=prices, forward=1.0, strike=ratio, maturity=t,
                             is_call=ratio >= 1)  # fmt: skip
    return pd.DataFrame({"strike": strike, "maturity": maturity, "forward": forward,
                         "discount": 1.0, "implied_vol": vols.numpy()})  # fmt: skip


def test_calibrate_method_network_on_synthetic_quotes() -> None:
    import qfnet.calibration_network_method  # noqa: F401  (registers the method)

    truth = {"v0": 0.05, "kappa": 2.0, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    fit = calibrate("heston", _synthetic_quotes(truth), method="network")
    assert fit.method == "network" and fit.iterations == 0
    assert set(fit.params) == set(NAMES)
    for name in ("v0", "theta", "rho"):
        assert fit.params[name] == pytest.approx(truth[name], rel=0.15), name
    assert math.isfinite(fit.rmse_iv_bp) and fit.rmse_iv_bp < 200.0


def test_surface_from_quotes_reproduces_grid_vols_of_a_quote_table() -> None:
    params = torch.tensor([[0.04, 1.5, 0.05, 0.4, -0.5]], dtype=torch.float64)
    exact = surface_vols(params)[0]
    truth = dict(zip(NAMES, params[0].tolist(), strict=True))
    interpolated = surface_from_quotes(_synthetic_quotes(truth))
    # Quotes at 6 expiries, 9 strikes within z in [-2, 2]: interpolation error well below 1 vol pt
    # inside the quoted strikes (the outer grid columns z = +-2.5 are flat-extrapolated).
    inner = torch.tensor([abs(z) <= 2.0 for z in np.linspace(-2.5, 2.5, 11)] * 6)
    torch.testing.assert_close(interpolated[inner], exact[inner], rtol=0.0, atol=0.01)


def _grid_surface_one_loop(quotes: pd.DataFrame, column: str) -> np.ndarray:
    """The grid interpolation written out per expiry with np.interp (slow, plainly right)."""
    x = np.log(quotes["strike"].to_numpy() / quotes["forward"].to_numpy())
    key, vol = quotes["maturity"].to_numpy().round(10), quotes[column].to_numpy()
    expiries = np.unique(key)
    smiles = []
    for t in expiries:
        strikes, which = np.unique(x[key == t], return_inverse=True)  # equal strikes: mean vol
        smiles.append((strikes, np.bincount(which, vol[key == t]) / np.bincount(which)))
    out = []
    for t in MATURITIES:
        k = np.linspace(-2.5, 2.5, 11) * 0.2 * math.sqrt(t)
        above = int(np.searchsorted(expiries, round(t, 10)))
        if above in (0, len(expiries)) or expiries[above] == round(t, 10):  # flat, or quoted
            out.append(np.interp(k, *smiles[min(above, len(expiries) - 1)]))
            continue
        t1, t2 = expiries[above - 1], expiries[above]
        w1, w2 = np.interp(k, *smiles[above - 1]) ** 2 * t1, np.interp(k, *smiles[above]) ** 2 * t2
        out.append(np.sqrt((w1 + (w2 - w1) * (t - t1) / (t2 - t1)) / t))
    return np.concatenate(out)


GRID_ATOL = 1e-14
"""Vectorised against per-expiry interpolation: the same arithmetic (0 measured), a few ulps of
slack for a compiler that fuses it differently."""


def test_grid_surfaces_of_many_tables_equal_the_interpolation_of_each() -> None:
    # odd tables: equal strikes, one-quote expiries, expiries beyond the grid, implied_vol
    rng = np.random.default_rng(5)
    tables = []
    for i in range(40):
        size = int(rng.integers(1, 16))
        maturity = rng.choice(rng.uniform(0.01, 5.0, int(rng.integers(1, 5))), size)
        strike = rng.choice([80.0, 90.0, 95.0, 100.0, 110.0, 120.0], size)
        column = "market_iv" if i % 3 else "implied_vol"
        tables.append(pd.DataFrame({"strike": strike, "forward": 100.0, "maturity": maturity,
                                    column: rng.uniform(0.1, 0.5, size)}))  # fmt: skip
    bad = tables[7].assign(maturity=-1.0)
    surfaces, errors = grid_surfaces([*tables, bad, tables[0].iloc[:0]])
    assert errors[:-2] == [None] * len(tables)
    assert errors[-2].startswith("quotes: row 0, column 'maturity': -1.0")
    assert errors[-1] == "quotes: the table is empty"
    assert bool(surfaces[-2:].isnan().all())
    for table, surface in zip(tables, surfaces, strict=False):
        column = "market_iv" if "market_iv" in table else "implied_vol"
        expected = torch.tensor(_grid_surface_one_loop(table, column))
        torch.testing.assert_close(surface, expected, rtol=0.0, atol=GRID_ATOL)


def test_grid_surfaces_of_tables_with_one_quote_per_expiry() -> None:
    # every smile a single quote (an ATM term structure): the padded smiles were one wide and
    # the interpolation indexed past them
    term = pd.DataFrame({"strike": 100.0, "forward": 100.0, "maturity": [0.25, 0.5, 1.0, 2.0],
                         "market_iv": [0.2, 0.21, 0.22, 0.23]})  # fmt: skip
    single = term.iloc[2:3].reset_index(drop=True)
    surfaces, errors = grid_surfaces([term, single])
    assert errors == [None, None]
    for table, surface in zip((term, single), surfaces, strict=True):
        expected = torch.tensor(_grid_surface_one_loop(table, "market_iv"))
        torch.testing.assert_close(surface, expected, rtol=0.0, atol=GRID_ATOL)


def test_grid_surfaces_read_a_call_and_a_put_at_one_strike_as_their_mean_whatever_the_order():
    # the smile took the first of equal strikes left of the strike and the last right of it:
    # calls 50 bp above puts gave grid vols 100 bp apart, and kappa 1.34 or 1.66 (true 1.5),
    # by row order
    truth = {"v0": 0.04, "kappa": 1.5, "theta": 0.05, "sigma": 0.5, "rho": -0.6}
    mid = _synthetic_quotes(truth).rename(columns={"implied_vol": "market_iv"})
    calls = mid.assign(market_iv=mid["market_iv"] + 0.005, option_type="call")
    puts = mid.assign(market_iv=mid["market_iv"] - 0.005, option_type="put")
    both = pd.concat([calls, puts], ignore_index=True)
    tables = [mid, both, pd.concat([puts, calls]), both.sample(frac=1.0, random_state=3)]
    surfaces, errors = grid_surfaces(tables)
    assert errors == [None] * 4
    for surface in surfaces[1:]:
        torch.testing.assert_close(surface, surfaces[0], rtol=0.0, atol=GRID_ATOL)


def test_grid_surfaces_name_the_table_of_a_value_that_is_not_a_number() -> None:
    # all tables were read in one conversion, whose error named no table; a repeated column
    # name made pd.concat fail for every table
    good = pd.DataFrame({"strike": [90.0, 110.0], "forward": 100.0, "maturity": 1.0,
                         "market_iv": [0.25, 0.2]})  # fmt: skip
    text = good.assign(strike=["n/a", 110.0])
    repeated = pd.concat([good, good[["forward"]].rename(columns={"forward": "note"}),
                          good[["forward"]].rename(columns={"forward": "note"})], axis=1)  # fmt: skip
    surfaces, errors = grid_surfaces([good, text, repeated])
    assert errors[0] is None and errors[2] is None
    assert "could not convert string to float: 'n/a'" in errors[1]
    torch.testing.assert_close(surfaces[2], surfaces[0], rtol=0.0, atol=0.0)
    assert bool(surfaces[1].isnan().all())


def test_predict_rejects_wrong_width() -> None:
    net = load_network()
    with pytest.raises(ValueError, match=r"\(B, 66\).*\(2, 65\)"):
        predict(net, torch.full((2, 65), 0.2))


def test_predict_rejects_nan_naming_the_point() -> None:
    vols = torch.full((2, 66), 0.2, dtype=torch.float64)
    vols[1, 13] = math.nan
    with pytest.raises(ValueError, match="surface 1, grid point 13"):
        predict(load_network(), vols)


def test_surface_from_quotes_rejects_missing_column_and_nan_vol() -> None:
    table = pd.DataFrame({"strike": [90.0, 100.0], "forward": 100.0, "maturity": 1.0})
    with pytest.raises(ValueError, match="missing column"):
        surface_from_quotes(table)
    with pytest.raises(ValueError, match="row 1"):
        surface_from_quotes(table.assign(implied_vol=[0.2, math.nan]))


def _noisy(quotes: pd.DataFrame, noise_bp: float, seed: int) -> pd.DataFrame:
    noise = noise_bp * 1e-4 * np.random.default_rng(seed).standard_normal(len(quotes))
    return quotes.assign(implied_vol=quotes["implied_vol"] + noise)


def test_importing_the_method_registers_the_network_as_a_global_start() -> None:
    import qfnet.calibration_network_method  # noqa: F401

    truth = {"v0": 0.05, "kappa": 2.0, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    quotes = _synthetic_quotes(truth)
    starts = proposed_starts("heston", CalibrationProblem(quotes, np.ones(len(quotes))))
    assert len(starts) == 1 and set(starts[0]) == set(NAMES)
    for name in ("v0", "theta", "rho"):
        assert starts[0][name] == pytest.approx(truth[name], rel=0.15), name
    bounded = CalibrationProblem(quotes, np.ones(len(quotes)), bounds={"rho": (-0.5, 0.5)})
    assert proposed_starts("heston", bounded)[0]["rho"] == -0.5  # clipped to the caller's box


def test_a_damaged_network_file_names_itself_as_the_global_start(tmp_path, monkeypatch) -> None:
    # method 'direct' failed with the network loader's message alone: nothing said that the file
    # was the fit's global start, nor that global_start="scan" fits without it
    import qfnet.calibration_network_method as method

    path = tmp_path / "network.pt"
    path.write_bytes(default_path().read_bytes()[:5000])  # cut short
    monkeypatch.setattr(method, "default_path", lambda: path)
    quotes = _synthetic_quotes(TRUTH)
    with pytest.raises(ValueError, match=r"network\.pt is not a readable calibration network.*"
                       r"global start of Heston 'direct' and 'surrogate' fits.*"
                       r"pass global_start='scan'"):  # fmt: skip
        calibrate("heston", quotes)
    assert calibrate("heston", quotes, global_start="scan", n_scan=32).rmse_iv_bp < 1.0


def test_direct_from_the_network_start_reaches_the_scan_optimum_with_a_smaller_scan(
    monkeypatch,
) -> None:
    import pricing.calibration_heston as heston_calibration
    import qfnet.calibration_network_method  # noqa: F401

    scanned: list[int] = []
    real = heston_calibration._scan_points
    monkeypatch.setattr(
        heston_calibration, "_scan_points", lambda n, seed: scanned.append(n) or real(n, seed)
    )
    truth = {"v0": 0.08, "kappa": 1.2, "theta": 0.05, "sigma": 0.7, "rho": -0.75}
    quotes = _noisy(_synthetic_quotes(truth), 50.0, seed=5)
    with_network = calibrate("heston", quotes, seed=1)
    scan_only = calibrate("heston", quotes, seed=1, global_start="scan")
    assert scanned == [heston_calibration.SCAN_WITH_PROPOSALS, 256]
    assert with_network.rmse_iv_bp == pytest.approx(scan_only.rmse_iv_bp, abs=0.01)
    assert 40.0 < with_network.rmse_iv_bp < 55.0  # the noise level: not a local minimum


def test_scan_keeps_surfaces_outside_the_network_box_from_getting_stuck() -> None:
    import qfnet.calibration_network_method  # noqa: F401

    # The DAX optimum (kappa ~ 15, sigma ~ 3) lies far outside the network's training box.
    dax = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"
    with_network = calibrate("heston", str(dax))
    scan_only = calibrate("heston", str(dax), global_start="scan")
    assert with_network.sse <= scan_only.sse + 1e-4
    assert with_network.params["kappa"] > BOX["kappa"][1]


TRUTH = {"v0": 0.04, "kappa": 1.5, "theta": 0.04, "sigma": 0.5, "rho": -0.7}


def test_network_method_refuses_a_start_it_would_ignore() -> None:
    # no optimisation: x0 was accepted and had no effect on the answer
    import qfnet.calibration_network_method  # noqa: F401

    quotes = _synthetic_quotes(TRUTH)
    with pytest.raises(ValueError, match=r"x0: method 'network' takes no start"):
        calibrate("heston", quotes, method="network", x0=TRUTH)
    with pytest.raises(ValueError, match=r"x0: method 'network' takes no start"):
        calibrate_many("heston", [quotes, quotes], method="network", x0=TRUTH)
    with pytest.raises(ValueError, match=r"method 'network' for heston takes no option 'n_scan'"):
        calibrate("heston", quotes, method="network", n_scan=64)


def test_unknown_global_start_is_refused() -> None:
    with pytest.raises(ValueError, match="global_start must be 'auto' or 'scan'"):
        calibrate("heston", _synthetic_quotes(TRUTH), global_start="network")


def _history(n: int) -> tuple[list[dict], list[pd.DataFrame]]:
    rng = np.random.default_rng(8)
    truths = [{"v0": rng.uniform(0.02, 0.15), "kappa": rng.uniform(1.0, 4.0),
               "theta": rng.uniform(0.02, 0.15), "sigma": rng.uniform(0.3, 0.9),
               "rho": rng.uniform(-0.85, -0.3)} for _ in range(n)]  # fmt: skip
    return truths, [_noisy(_synthetic_quotes(t), 20.0, seed=i) for i, t in enumerate(truths)]


def test_calibrate_many_with_the_network_is_one_pass_equal_to_single_calls() -> None:
    import qfnet.calibration_network_method  # noqa: F401

    _, tables = _history(4)
    many = calibrate_many("heston", tables, method="network")
    for table, fit in zip(tables, many, strict=True):
        single = calibrate("heston", table, method="network")
        for name in NAMES:
            assert fit.params[name] == pytest.approx(single.params[name], rel=1e-12), name
        assert fit.rmse_iv_bp == pytest.approx(single.rmse_iv_bp, rel=1e-9)
        assert fit.n_quotes == len(table) and fit.method == "network"


def test_calibrate_many_direct_fits_a_history_of_surfaces_in_one_batch() -> None:
    import qfnet.calibration_network_method  # noqa: F401

    truths, tables = _history(3)
    many = calibrate_many("heston", tables, seed=2)
    for truth, table, fit in zip(truths, tables, many, strict=True):
        single = calibrate("heston", table, seed=2)
        assert fit.rmse_iv_bp == pytest.approx(single.rmse_iv_bp, abs=0.01)
        assert fit.rmse_iv_bp < 25.0  # the 20 bp noise, not a local minimum
        assert fit.params["rho"] == pytest.approx(truth["rho"], abs=0.1)
        assert fit.converged


def test_calibrate_many_names_the_bad_table_and_refuses_a_single_table() -> None:
    _, tables = _history(2)
    broken = tables[1].assign(implied_vol=np.where(np.arange(len(tables[1])) == 3, -0.2,
                                                   tables[1]["implied_vol"]))  # fmt: skip
    with pytest.raises(ValueError, match="quote table 1"):
        calibrate_many("heston", [tables[0], broken], method="direct")
    with pytest.raises(TypeError, match="sequence of quote tables"):
        calibrate_many("heston", tables[0])
    with pytest.raises(ValueError, match="no quote tables"):
        calibrate_many("heston", [])


def test_network_method_warns_when_the_quotes_leave_its_grid_to_extrapolation():
    truth = {"v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    table = _synthetic_quotes(truth).query("maturity == 1.0")  # one expiry
    with pytest.warns(UserWarning, match="flat extrapolation"):
        calibrate("heston", table, method="network")
    full = _synthetic_quotes(truth)
    with pytest.warns(UserWarning, match=r"table 1: expiries cover 1 to 1 years"):
        calibrate_many("heston", [full, table], method="network")  # one warning, naming table 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate_many("heston", [full, full], method="network")
    with pytest.raises(ValueError, match="the table is empty"):
        surface_from_quotes(table.iloc[:0])


def test_network_method_warns_when_the_last_expiry_leaves_the_3_year_row_to_extrapolation():
    # expiries to 2 years passed (the check allowed a factor 1.5 short of 3 years): the grid's
    # 3-year row flat from 2 years took the answer's median error on 100 surfaces from 3 to 43 bp
    truth = {"v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    table = _synthetic_quotes(truth).query("maturity <= 2.0")
    with pytest.warns(UserWarning, match=r"expiries cover 0.1 to 2 years; the calibration "
                      r"network reads 0.0822 to 3 years"):  # fmt: skip
        calibrate("heston", table, method="network")


def test_network_method_warns_when_an_early_first_expiry_is_far_from_the_next():
    # a first expiry at 7 days, the next at 3 months: the grid's 30-day row, interpolated
    # between them, took the answer's median error on 50 surfaces from 3.8 to 42 bp unsaid
    truth = {"v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    table = _synthetic_quotes(truth, (7 / 365, 0.25, 0.5, 1.0, 2.0, 3.0))
    with pytest.warns(UserWarning, match=r"expiries jump from 0.0192 to 0.25 years across"):
        calibrate("heston", table, method="network")
    with warnings.catch_warnings():  # a quote near 30 days reads the row: 3.8 bp
        warnings.simplefilter("error")
        calibrate("heston", _synthetic_quotes(truth, (7 / 365, *MATURITIES)), method="network")


def test_network_method_warns_when_expiries_are_far_apart_around_a_later_grid_row():
    # only the 30-day row was checked: quotes at 0.1 and 1 year (the 3- and 6-month rows
    # interpolated between them) took the answer's median error on 100 surfaces from 3 to 106 bp
    # unsaid; a quarterly chain's 0.2 and 0.45 years around the 3-month row, 3.5 to 14 bp
    truth = {"v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    table = _synthetic_quotes(truth, (0.1, 1.0, 2.0, 3.0))
    with pytest.warns(UserWarning, match=r"expiries jump from 0.1 to 1 years across the grid's "
                      r"0.25-year maturity; .* interpolation between expiries"):  # fmt: skip
        calibrate("heston", table, method="network")
    quarterly = _synthetic_quotes(truth, (0.1, 0.2, 0.45, 0.7, 0.95, 1.45, 1.95, 2.95))
    with pytest.warns(UserWarning, match=r"from 0.2 to 0.45 years across the grid's 0.25-year"):
        calibrate("heston", quarterly, method="network")
    monthly = (30 / 365, 60 / 365, 0.25, 120 / 365, 150 / 365, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    with warnings.catch_warnings():  # every row quoted, or between expiries 1.5 or 3 apart
        warnings.simplefilter("error")
        calibrate("heston", _synthetic_quotes(truth, monthly), method="network")
        calibrate("heston", _synthetic_quotes(truth, (0.1, 0.25, 0.5, 1.0, 3.0)), method="network")


def test_network_method_warns_when_the_strikes_leave_its_grid_to_extrapolation():
    # Every expiry, but strikes within 5% of the forward: the grid's wings (ln(K/F) up to
    # 0.5 sqrt(T)) were flat-extrapolated without a word (kappa 5.0, sigma 0.14 for 1.5, 0.5).
    truth = {"v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    full = _synthetic_quotes(truth)
    narrow = full[np.abs(np.log(full["strike"] / full["forward"])) <= 0.05]
    with pytest.warns(UserWarning, match=r"strikes cover ln\(K/F\)/sqrt\(T\) -0.1\d* to 0.1"):
        calibrate("heston", narrow, method="network")
    with pytest.warns(UserWarning, match="table 1: strikes cover"):
        calibrate_many("heston", [full, narrow], method="network")


def test_network_method_warns_when_the_long_expiries_strikes_leave_its_grid_to_extrapolation():
    # K/F 0.8 to 1.2 at every expiry (the benchmark's surfaces) reach the grid's wings at 30
    # days, so the table passed; the wings of the later expiries (ln(K/F) up to 0.87 at 3
    # years) were flat: kappa 4.7 and theta 0.031 for a true 0.8 and 0.06, 220 bp, unsaid
    from pricing.heston import otm_implied_vol

    truth = {"v0": 0.09, "kappa": 0.8, "theta": 0.06, "sigma": 0.9, "rho": -0.8}
    t, ratio = np.repeat(MATURITIES, 11), np.tile(np.linspace(0.8, 1.2, 11), 6)
    vol = otm_implied_vol(ratio=torch.tensor(ratio), maturity=torch.tensor(t), **truth).numpy()
    table = pd.DataFrame({"strike": 100.0 * ratio, "maturity": t, "forward": 100.0,
                          "discount": 1.0, "implied_vol": vol})  # fmt: skip
    where = r"strikes cover ln\(K/F\)/sqrt\(T\) -0.316 to 0.258 at T=0.5 and 3 later expiries"
    with pytest.warns(UserWarning, match=where):
        calibrate("heston", table, method="network")
    wide = _synthetic_quotes(truth)  # strikes scaled with sqrt(T): no word
    with pytest.warns(UserWarning, match=f"table 1: {where}") as caught:
        calibrate_many("heston", [wide, table], method="network")
    assert not any("table 0" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "expiries",
    [[1.0], [0.01, 5.0], [2.5, 0.1, 0.7, 0.05], [0.25, 0.5, 1.0], [0.3, 0.15, 0.1, 0.2, 0.35, 1.5],
     [0.1, 0.2, 0.25, 1.0, 30 / 365]],
)  # fmt: skip
def test_the_strike_warning_checks_the_expiries_the_grid_reads(expiries: list[float]) -> None:
    # the warning and grid_surfaces pick the expiries beside each grid maturity with one helper
    # (two copies could drift apart): with strikes too narrow everywhere, the warning names
    # exactly the expiries whose vols move the grid
    ratio = np.array([0.99, 1.0, 1.01])
    table = pd.DataFrame({"strike": 100.0 * np.tile(ratio, len(expiries)), "forward": 100.0,
                          "maturity": np.repeat(expiries, 3), "market_iv": 0.2})  # fmt: skip
    base = grid_surfaces([table])[0]
    moved = {t for t in expiries
             if not torch.equal(grid_surfaces([table.assign(market_iv=np.where(
                 table["maturity"] == t, 0.3, 0.2))])[0], base)}  # fmt: skip
    assert {t for t, _, _ in _narrow_expiries(table)} == {round(t, 10) for t in moved}


def test_the_strike_warning_passes_a_narrow_expiry_just_before_a_quoted_grid_maturity():
    # the grid's 0.25- and 3-year rows read only the expiries at 0.25 and 3 years, but the
    # expiries just before them (weight 0) were named: a warning and converged False for an
    # answer equal to the one without them
    truth = {"v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    full = _synthetic_quotes(truth)
    near = full[np.abs(np.log(full["strike"] / full["forward"])) <= 0.03]
    extra = pd.concat([near.query("maturity == 0.25").assign(maturity=0.2),
                       near.query("maturity == 3.0").assign(maturity=2.5)])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = calibrate("heston", pd.concat([full, extra], ignore_index=True), method="network")
    alone = calibrate("heston", full, method="network")
    assert fit.converged
    for name in NAMES:
        assert fit.params[name] == pytest.approx(alone.params[name], rel=1e-12), name


def test_network_method_leaves_out_the_quotes_weighted_zero():
    # the network read every quote whatever its weight: a 200% vol weighted 0 (an outlier left
    # out of the fit) took v0 from 0.049 to 0.012 and kappa from 2.1 to 0.5, the box's edge
    truth = {"v0": 0.05, "kappa": 2.0, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    table = _synthetic_quotes(truth)
    bad = np.arange(len(table)) == 5
    outlier = table.assign(implied_vol=np.where(bad, 2.0, table["implied_vol"]))
    weights = np.where(bad, 0.0, 1.0)
    without = calibrate("heston", table[~bad], method="network").params
    fits = [calibrate("heston", outlier, method="network", weights=weights),
            *calibrate_many("heston", [table, outlier], method="network",
                            weights=["equal", weights])[1:]]  # fmt: skip
    (start,) = proposed_starts("heston", CalibrationProblem(outlier, weights))
    for params in [fit.params for fit in fits] + [start]:
        for name in NAMES:
            assert params[name] == pytest.approx(without[name], rel=1e-12), name


def test_bad_inputs_name_the_column_or_shape():
    # a maturity of 0 and vols in percent went into the interpolation; a sixth parameter column
    # was ignored; sample_parameters(0) was a torch size error
    quotes = pd.DataFrame({"strike": [90.0, 110.0], "forward": 100.0, "maturity": [0.5, 0.0],
                           "market_iv": [0.2, 0.2]})  # fmt: skip
    with pytest.raises(ValueError, match=r"row 1, column 'maturity'"):
        surface_from_quotes(quotes)
    with pytest.raises(ValueError, match=r"row 0, column 'strike': inf"):  # inf passed "> 0"
        surface_from_quotes(quotes.assign(maturity=1.0, strike=[np.inf, 110.0]))
    with pytest.raises(ValueError, match=r"column 'market_iv': 20.0 .* in decimals"):
        surface_from_quotes(quotes.assign(maturity=1.0, market_iv=[20.0, 20.0]))
    with pytest.raises(ValueError, match=r"params must have shape \(P, 5\)"):
        surface_vols(torch.full((1, 6), 0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_parameters(0)


def test_network_method_warns_when_its_answer_sits_on_the_edge_of_its_box():
    # the DAX surface (short expiries, steep skew) saturates the network's sigmoid: kappa 5.0 and
    # sigma 1.0, the box's edges, came back as converged with nothing said
    dax = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"
    with pytest.warns(UserWarning, match=r"edge of its training box: kappa 5 in \[0.5, 5\]"):
        fit = calibrate("heston", str(dax), method="network")
    assert fit.params["kappa"] == pytest.approx(5.0, abs=0.05)


def test_network_method_says_when_the_callers_bounds_clip_its_answer():
    # rho -0.7 came back as -0.5 for bounds (-0.5, 0) (172 bp for 5 bp) without a word; bounds
    # kappa (6, 10) clipped kappa 1.5 to 6 and the edge warning blamed the surface
    import qfnet.calibration_network_method  # noqa: F401

    table = _synthetic_quotes(TRUTH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        free = calibrate("heston", table, method="network").params
    with pytest.warns(UserWarning, match=r"outside the bounds and was clipped to them: rho -0\.\d+ "
                      r"to -0\.5 \(method 'direct'") as caught:  # fmt: skip
        fit = calibrate("heston", table, method="network", bounds={"rho": (-0.5, 0.0)})
    assert fit.params["rho"] == -0.5 and len(caught) == 1
    assert fit.params["kappa"] == pytest.approx(free["kappa"], rel=1e-12)
    with pytest.warns(UserWarning, match=r"table 1: kappa 1\.\d+ to 6") as caught:
        calibrate_many("heston", [table, table], method="network",
                       bounds={"kappa": (6.0, 10.0)})  # fmt: skip
    assert not any("edge of its training box" in str(w.message) for w in caught)
    bounded = CalibrationProblem(table, np.ones(len(table)), bounds={"rho": (-0.5, 0.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (start,) = proposed_starts("heston", bounded)
    assert start["rho"] == -0.5  # a start is clipped without a word (the fit is within bounds)


def test_network_method_warnings_point_at_the_callers_line() -> None:
    # the grid, edge and clipping warnings pointed at calibrate's own line in
    # pricing/calibration.py (its other warnings point at the caller's), in inference mode too
    import qfnet.calibration_network_method  # noqa: F401

    dax = str(Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv")
    table, rho = _synthetic_quotes(TRUTH), {"rho": (-0.5, 0.0)}
    calls = [
        (calibrate, dax, {}, ("rough start", "edge of its training box")),
        (calibrate, table, {"bounds": rho}, ("clipped",)),
        (calibrate_many, [dax, table], {"bounds": rho}, ("rough start", "edge of", "clipped")),
    ]
    for fit, quotes, kwargs, said in calls:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.inference_mode():
                fit("heston", quotes, method="network", **kwargs)
        messages = " ".join(str(w.message) for w in caught)
        assert all(words in messages for words in said), messages
        assert {w.filename for w in caught} == {__file__}


def test_network_method_is_converged_only_where_none_of_its_warnings_names_the_answer():
    # converged was True whatever the answer: one at the edge of the box (DAX: kappa 5.0 and
    # sigma 1.0, ~320 bp against direct's ~130), one clipped to the bounds, one read off a
    # single expiry; converged now says that no warning named the table
    import qfnet.calibration_network_method  # noqa: F401

    dax = Path(__file__).parents[2] / "data" / "dax_2002_sepp" / "implied_vols.csv"
    full = _synthetic_quotes(TRUTH)
    one = full.query("maturity == 1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = [calibrate("heston", full, method="network"),
                calibrate("heston", one, method="network"),
                calibrate("heston", str(dax), method="network"),
                calibrate("heston", full, method="network", bounds={"rho": (-0.5, 0.0)}),
                *calibrate_many("heston", [full, one, full], method="network")]  # fmt: skip
    assert [fit.converged for fit in fits] == [True, False, False, False, True, False, True]
    assert all(fit.iterations == 0 for fit in fits)


def test_a_save_that_fails_midway_leaves_the_previous_network_whole(tmp_path, monkeypatch):
    # save_network wrote with a plain torch.save: a killed write left half a file in its place
    import qfnet.training.checkpoint as checkpoint

    path = tmp_path / "net.pt"
    save_network(load_network(), path)
    before = path.read_bytes()

    def cut_short(payload, f):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", cut_short)
    with pytest.raises(OSError, match="No space left"):
        save_network(load_network(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["net.pt"]


def test_train_network_same_seed_same_weights_whatever_the_global_rng() -> None:
    # The initial weights came from torch's global generator, not from ``seed``: two calls with
    # seed=0 in one process trained different networks.
    params, vols = make_dataset(32, seed=1)

    def weights(seed: int, global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        net = train_network(params, vols, hidden=(8,), max_epochs=1, batch_size=8, seed=seed)
        return list(net.state_dict().values())

    first, again, other = weights(0, 1), weights(0, 2), weights(1, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_train_network_refuses_data_it_cannot_learn_naming_the_problem() -> None:
    # parameters outside the box trained without a word (the sigmoid cannot reach them); a
    # count mismatch was torch's "Size mismatch between tensors"; numpy arrays a TypeError in the
    # scaler; two surfaces a NaN loss (the std of the one training surface)
    params, vols = make_dataset(32, seed=1)

    def train(p, v) -> CalibrationNetwork:
        return train_network(p, v, hidden=(8,), max_epochs=1, batch_size=8, seed=0)

    wide = params.clone()
    wide[3, NAMES.index("kappa")] = 8.0
    with pytest.raises(ValueError, match=r"params: row 3, kappa 8.0 is outside the network's box"):
        train(wide, vols)
    with pytest.raises(ValueError, match=r"params: expected shape \(32, 5\) .* got \(31, 5\)"):
        train(params[:-1], vols)
    with pytest.raises(ValueError, match=r"2 surfaces leave 1 for training"):
        train(params[:2], vols[:2])
    from_numpy = train(params.numpy(), vols.numpy())
    from_torch = train(params, vols)
    for a, b in zip(
        from_numpy.state_dict().values(), from_torch.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("val_fraction", [-0.5, 0.0, 1.0, 2.0, math.nan])
def test_train_network_refuses_a_val_fraction_it_cannot_honour(val_fraction: float) -> None:
    # a negative fraction or 0 held out one surface without a word; 2.0 spoke of -32 surfaces
    params, vols = make_dataset(32, seed=1)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got"):
        train_network(params, vols, hidden=(8,), max_epochs=1, val_fraction=val_fraction)


@pytest.mark.parametrize("field", ["box", "architecture", "grid", "format", "scaler"])
def test_save_network_refuses_info_that_would_replace_its_own_fields(tmp_path, field) -> None:
    # save_network(net, path, box=...) replaced the written field: the file loaded as "damaged"
    # (box, architecture), "not this qfnet's grid", or with a scaler entry that lied
    path = tmp_path / "net.pt"
    with pytest.raises(ValueError, match=rf"info: \['{field}'\] are fields save_network writes"):
        save_network(CalibrationNetwork(hidden=(8,)), path, **{field: {"v0": [0.0, 1.0]}})
    assert not path.exists()


def test_train_network_resumes_an_interrupted_run_to_the_same_weights(tmp_path, monkeypatch):
    # train_network took a run_dir but no resume: a second call with the same run_dir started a
    # new run, which removed the interrupted run's checkpoints
    import qfnet.calibration_network as module

    params, vols = make_dataset(48, seed=1)

    def train(run_dir, resume=False) -> CalibrationNetwork:
        return train_network(params, vols, hidden=(8,), max_epochs=4, batch_size=8, seed=0,
                             run_dir=str(run_dir), resume=resume)  # fmt: skip

    whole = train(tmp_path / "whole")

    class Interrupted(module.EarlyStopping):
        def on_epoch_end(self, trainer) -> None:
            super().on_epoch_end(trainer)
            trainer.should_stop = trainer.should_stop or trainer.epoch >= 1

    with monkeypatch.context() as patch:
        patch.setattr(module, "EarlyStopping", Interrupted)
        cut = train(tmp_path / "cut")
    pairs = zip(cut.state_dict().values(), whole.state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)
    resumed = train(tmp_path / "cut", resume=True)
    for a, b in zip(resumed.state_dict().values(), whole.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_new_run_interrupted_leaves_no_replaced_network_in_its_run_dir(tmp_path, monkeypatch):
    # model.pt was written at the end only: a new run interrupted in the same run_dir left the
    # replaced run's network beside the new run's metrics and checkpoints
    import qfnet.calibration_network as module

    params, vols = make_dataset(48, seed=1)
    train_network(params, vols, hidden=(8,), max_epochs=2, batch_size=8, seed=0, run_dir=tmp_path)
    assert (tmp_path / "model.pt").exists()

    class Interrupted(module.EarlyStopping):
        def on_epoch_end(self, trainer) -> None:
            raise RuntimeError("interrupted")

    monkeypatch.setattr(module, "EarlyStopping", Interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_network(params, vols, hidden=(8,), max_epochs=2, batch_size=8, seed=1,
                      run_dir=tmp_path)  # fmt: skip
    assert not (tmp_path / "model.pt").exists()


def test_rebuild_command_refuses_resume_without_a_run_dir(capsys) -> None:
    from qfnet.calibration_network import _main

    with pytest.raises(SystemExit):
        _main(["--resume"])
    assert "--resume needs --run-dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value"),
    [("--epochs", "0"), ("--batch", "0"), ("--threads", "0"), ("--n", "-5"), ("--hidden", "8,0"),
     ("--hidden", "8,x"), ("--hidden", "")],
)  # fmt: skip
def test_rebuild_command_refuses_a_bad_count_before_making_the_data(capsys, option, value) -> None:
    # a 0 epochs, batch or width raised a traceback after the data set was labelled (70 s at
    # the default --n 60000); --threads 0 and --hidden 8,x were tracebacks too
    from qfnet.calibration_network import _main

    with pytest.raises(SystemExit):
        _main(["--n", "50", "--out", "unused.pt", option, value])
    assert f"argument {option}: must be" in capsys.readouterr().err


def test_rebuild_command_help_describes_every_option(capsys, monkeypatch) -> None:
    # --out, --n, --epochs, --hidden, --batch, --seed and --threads had no help: `--help` listed
    # bare names (and did not say that --out's default is the shipped file, which it replaces)
    from qfnet.calibration_network import _main

    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    with pytest.raises(SystemExit):
        _main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    options = [line.split() for line in lines if line.lstrip().startswith("--")]
    assert len(options) == 9
    bare = [words[0] for words in options if len(words) <= 2]  # the name and its metavar
    assert not bare, bare
    assert any("shipped" in line for line in lines if "--out" in line)


def test_network_fit_statistics_count_the_quotes_with_a_model_vol() -> None:
    # Two 1-hour quotes 30% out of the money: the model prices them at 0 in float64, so they have
    # no model vol, and the answer's RMSE and largest error were NaN (JSON null) without a word
    import qfnet.calibration_network_method  # noqa: F401

    truth = {"v0": 0.04, "kappa": 1.5, "theta": 0.06, "sigma": 0.5, "rho": -0.6}
    wings = pd.DataFrame({"strike": [70.0, 130.0], "maturity": 1 / (365 * 24), "forward": 100.0,
                          "discount": 1.0, "implied_vol": 0.3})  # fmt: skip
    table = pd.concat([_synthetic_quotes(truth), wings], ignore_index=True)
    with pytest.warns(UserWarning) as caught:  # the expiries' gap and this
        fit = calibrate("heston", table, method="network")
    assert any(
        "vol at the fitted parameters for 2 of 56 weighted" in str(w.message) for w in caught
    )
    error = fit.residuals["error_bp"].to_numpy()
    assert np.isnan(error[-2:]).all() and fit.n_quotes == 56
    expected = math.sqrt(float(np.mean(error[:-2] ** 2)))
    assert fit.rmse_iv_bp == pytest.approx(expected, rel=1e-12)
    assert fit.max_abs_iv_bp == pytest.approx(float(np.abs(error[:-2]).max()), rel=1e-12)
    with pytest.warns(UserWarning) as caught:
        many = calibrate_many("heston", [_synthetic_quotes(truth), table], method="network")
    assert any("quote table 1: 2 of 56 weighted quotes" in str(w.message) for w in caught)
    assert many[1].rmse_iv_bp == pytest.approx(fit.rmse_iv_bp, rel=1e-9)
