"""The demo report's computed text: the QuantLib reference, the hedging setup and columns."""

from __future__ import annotations

import dataclasses

import pytest

from qfnet.demo import (
    HEDGE_CONFIG,
    _hedge_columns,
    _hedge_setup,
    _quantlib_reference_sse,
)
from qfnet.hedging.config import load_config


def test_the_quantlib_reference_is_computed_and_matches_the_published_sse():
    version, sse = _quantlib_reference_sse()
    assert version.count(".") >= 1
    assert sse == pytest.approx(177.2, abs=0.05)  # Sepp (2003), one decimal


def test_the_hedging_setup_follows_the_config_it_describes():
    config = load_config(HEDGE_CONFIG)
    changed = dataclasses.replace(
        config,
        market=dataclasses.replace(config.market, n_steps=10, cost=5e-4),
        derivative=dataclasses.replace(config.derivative, strike=1.1, is_call=False),
        objective=dataclasses.replace(config.objective, alpha=0.99),
        paths=dataclasses.replace(config.paths, train=4000),
        training=dataclasses.replace(config.training, epochs=1),
    )
    text = _hedge_setup(changed)
    # the text was fixed ("Short ATM call, 20 daily steps, 10 bp ..."), whatever was run
    assert text.startswith("Short european put (strike 1.1), 10 rebalancing steps")
    assert "5 bp proportional costs" in text and "ES99" in text
    assert "(4000 training paths, at most 1 epoch)" in text


def test_the_hedging_columns_are_explained_with_the_run_numbers():
    # the table's turnover and cost columns were not explained anywhere in the report
    config = load_config(HEDGE_CONFIG)
    changed = dataclasses.replace(
        config, market=dataclasses.replace(config.market, liquidate=False, cost=5e-4)
    )
    report = {"learned": {"turnover": 0.812, "cost": 3.1e-4},
              "delta": {"turnover": 1.94, "cost": 7.5e-4}}  # fmt: skip
    turnover, cost = _hedge_columns(changed, report)
    assert turnover.startswith("- `turnover`: units traded per path")
    assert "(no liquidation at expiry)" in turnover and "`learned` 0.812, `delta` 1.94" in turnover
    assert cost.startswith("- `cost`: transaction costs paid per path")
    assert "5 bp of each trade's value" in cost and "`learned` 0.00031, `delta` 0.00075" in cost


def test_a_damaged_shipped_network_is_named_not_a_key_error(tmp_path, monkeypatch) -> None:
    # every Heston method that reads the network failed on it and was "not applicable", and
    # the report's direct fit then raised KeyError('direct')
    import qfnet.calibration_network_method as network_method
    from qfnet.demo import _calibration_stage
    from qfnet.training.checkpoint import ModelFileError

    network = tmp_path / "network.pt"
    network.write_bytes(b"not a zip archive")
    monkeypatch.setattr(network_method, "default_path", lambda: network)
    with pytest.raises(ModelFileError, match=f"^{network} is not a readable calibration network"):
        _calibration_stage(tmp_path, seed=0)


def test_an_interrupted_rerun_leaves_no_report_of_the_earlier_run(tmp_path, monkeypatch) -> None:
    # the earlier run's report.md stayed beside the rerun's new files (and the folders it had
    # removed) until the rerun reached its end
    import qfnet.demo as demo

    out = tmp_path / "demo_report"
    (out / "surrogate_run").mkdir(parents=True)
    (out / ".qfnet-demo").write_text("written by qfnet demo\n")
    (out / "report.md").write_text("# qfnet demo report\n\nseed 0\n")
    (out / "calibration_heston.json").write_text("{}")
    (out / "notes.txt").write_text("the user's\n")

    def interrupted(out, seed):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_calibration_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out, quick=True, seed=1)
    assert not (out / "report.md").exists() and not (out / "surrogate_run").exists()
    assert not (out / "calibration_heston.json").exists()
    assert (out / "notes.txt").read_text() == "the user's\n"
