"""Config loading: the shipped configs load; bad configs fail naming the key."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from qfnet.hedging.config import (
    BaselineConfig,
    ConfigError,
    HedgeConfig,
    MarketConfig,
    ObjectiveConfig,
    config_from_dict,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[3] / "data" / "configs"


@pytest.mark.parametrize("name", ["hedge_bs_cost10bp.yaml", "hedge_heston_cost10bp.yaml"])
def test_shipped_configs_match_the_issue(name: str) -> None:
    config = load_config(CONFIGS / name)
    m = config.market
    assert (m.spot, config.derivative.strike, m.n_steps, m.cost) == (1.0, 1.0, 20, 1e-3)
    assert m.maturity == pytest.approx(20 / 250, abs=1e-15)
    assert config.paths.test == 200_000
    assert (config.objective.name, config.objective.alpha) == ("es", 0.95)
    assert config.paths.train * config.training.epochs <= 2_000_000
    if m.model == "heston":
        assert (m.kappa, m.theta, m.sigma, m.rho, m.v0) == (1.0, 0.04, 0.2, -0.7, 0.04)
    else:
        assert m.volatility == 0.2


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            {"market": {"volatilty": 0.2}},
            r"unknown key 'market.volatilty' \(did you mean 'volatility'",
        ),
        ({"markt": {}}, r"unknown key 'markt'"),
        ({"market": {"volatility": "high"}}, r"market.volatility must be a number"),
        ({"market": {"volatility": -0.2}}, r"market.volatility must be > 0"),
        ({"market": {"n_steps": 2.5}}, r"market.n_steps must be an integer"),
        ({"market": {"model": "sabr"}}, r"market.model must be one of"),
        ({"market": {"rho": -1.5, "model": "heston"}}, r"market.rho must be in \(-1, 1\)"),
        ({"market": {"cost": -1e-3}}, r"market.cost must be >= 0"),
        ({"market": {"instruments": ["underlying", "variance_swap"]}}, r"variance_swap needs"),
        ({"market": {"instruments": ["stock"]}}, r"market.instruments must start with"),
        (
            {"market": {"model": "heston", "instruments": ["underlying", "variance_swap"] * 2}},
            r"market.instruments\[2\] repeats 'underlying': list each once",
        ),
        ({"market": {"liquidate": "yes"}}, r"market.liquidate must be true or false"),
        ({"derivative": {"type": "barrier"}}, r"derivative.barrier is required"),
        ({"objective": {"alpha": 1.5}}, r"objective.alpha must be in \(0, 1\)"),
        ({"training": {"batch_size": 0}}, r"training.batch_size must be > 0"),
        ({"strategy": {"hidden": [16, -1]}}, r"strategy.hidden"),
        ({"strategy": {"type": "ntb", "reference": "none"}}, r"strategy.reference"),
        # settings the chosen policy does not use trained the same network, silently
        ({"strategy": {"type": "gru", "activation": "tanh"}}, r"strategy.activation is the MLP's"),
        ({"strategy": {"type": "gru", "initial_width": 0.1}}, r"strategy.initial_width is the ntb"),
        ({"strategy": {"type": "mlp", "initial_width": 0.1}}, r"the mlp policy starts at the"),
        ({"paths": {"test": 0}}, r"paths.test must be > 0"),
        # one test path passed, and the backtest failed on it naming no key
        ({"paths": {"test": 1}}, r"paths.test must be >= 2"),
        ([1, 2], r"config must be a mapping"),
        ({"market": {"cost": float("nan")}}, r"market.cost must be a finite number"),
        ({"market": {"rate": float("nan")}}, r"market.rate must be a finite number"),
        ({"market": {"spot": float("inf")}}, r"market.spot must be a finite number"),
        ({"derivative": {"premium": float("nan")}}, r"derivative.premium must be a finite"),
        # a negative premium trained and reported as if the seller had paid to sell
        ({"derivative": {"premium": -0.01}}, r"derivative.premium must be >= 0 \(received"),
        # 1e6 failed in the delta on an underflowed spot: "spot must be finite and > 0"
        ({"market": {"maturity": 1e6}}, r"market.maturity must be in \(0, 100\] \(years\)"),
        ({"training": {"lr": float("inf")}}, r"training.lr must be a finite number"),
        ({"market": {"rho": 1.0, "model": "heston"}}, r"market.rho must be in \(-1, 1\)"),
        ({"seed": -3}, r"seed must be in \[0, 2\*\*32\)"),
        ({"training": {"device": "gpu"}}, r"training.device must be auto, cpu, cuda"),
        # device types torch knows but the Trainer does not train on: tracebacks in training
        ({"training": {"device": "meta"}}, r"training.device must be auto, cpu, cuda"),
        ({"training": {"device": "xpu"}}, r"training.device must be auto, cpu, cuda"),
        (
            {"derivative": {"type": "barrier", "barrier": 1.0, "barrier_type": "down_out"}},
            r"derivative.barrier 1.0 is hit at the start \(market.spot 1.0\)",
        ),
        (
            {"derivative": {"type": "barrier", "barrier": 0.9, "barrier_type": "up_in"}},
            r"an up_in barrier must lie above the spot",
        ),
    ],
)
def test_bad_configs_raise_naming_the_key(data: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (
            HedgeConfig(baselines=BaselineConfig(ww_risk_aversion=math.inf)),
            "baselines.ww_risk_aversion",
        ),
        (HedgeConfig(objective=ObjectiveConfig(risk_aversion=math.inf)), "objective.risk_aversion"),
        (HedgeConfig(market=MarketConfig(volatility=math.inf)), "market.volatility"),
    ],
)
def test_configs_built_in_python_refuse_an_infinite_positive_value(config, key) -> None:
    # YAML's .inf is refused when read; set in Python it passed `> 0` (an infinite
    # ww_risk_aversion backtested the delta hedge as Whalley-Wilmott's)
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} must be a finite number, got inf$"):
        config.validate()


def test_yaml_errors_and_calibration_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("market: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(bad)
    bad.write_text("\n# only a comment\n")  # empty: ran on every default before
    with pytest.raises(ConfigError, match=r"bad.yaml is empty \(write '\{\}'"):
        load_config(bad)
    bad.write_text("{}\n")
    assert load_config(bad).seed == HedgeConfig().seed
    params = {"v0": 0.05, "kappa": 2.0, "theta": 0.06, "sigma": 0.4, "rho": -0.5}
    (tmp_path / "fit.json").write_text(json.dumps({"model": "heston", "params": params}))
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("market:\n  model: heston\n  calibration: fit.json\n")
    config = load_config(cfg_file)
    assert (config.market.v0, config.market.kappa, config.market.rho) == (0.05, 2.0, -0.5)
    (tmp_path / "broken.json").write_text(json.dumps({"params": {"v0": 0.05}}))
    cfg_file.write_text("market:\n  model: heston\n  calibration: broken.json\n")
    with pytest.raises(ConfigError, match=r"market.calibration: .* lacks Heston params"):
        load_config(cfg_file)
    cfg_file.write_text("market:\n  volatility: -0.2\n")  # the file is named beside the key
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(cfg_file))}: market.volatility"):
        load_config(cfg_file)


@pytest.mark.parametrize("text", ["[1]", '"fit"'])
def test_a_calibration_file_that_is_no_object_of_params_names_the_file(tmp_path, text):
    # a JSON list or string was a bare TypeError ("list indices must be integers")
    (tmp_path / "fit.json").write_text(text)
    with pytest.raises(ConfigError, match=r"market.calibration: .*fit\.json"):
        config_from_dict({"market": {"model": "heston", "calibration": "fit.json"}},
                         base_dir=tmp_path)  # fmt: skip


@pytest.mark.parametrize("params", [5, None, "v0 kappa theta sigma rho", [0.04]])
def test_calibration_params_that_are_no_object_name_the_file(tmp_path, params):
    # a number or null was a bare TypeError ("argument of type 'int' is not iterable"); a text
    # was searched for the names as substrings
    (tmp_path / "fit.json").write_text(json.dumps({"params": params}))
    with pytest.raises(ConfigError, match=r"market.calibration: .*fit\.json: params must be an "
                       r"object of Heston params, got "):  # fmt: skip
        config_from_dict({"market": {"model": "heston", "calibration": "fit.json"}},
                         base_dir=tmp_path)  # fmt: skip


@pytest.mark.parametrize("v0", [float("nan"), "abc", True])
def test_calibration_params_that_are_not_finite_numbers_name_the_file_and_key(tmp_path, v0):
    # NaN slipped past the v0 >= 0 check; "abc" was a bare ValueError; true was read as v0 = 1.0
    # and trained on without a word
    params = {"v0": v0, "kappa": 2.0, "theta": 0.06, "sigma": 0.4, "rho": -0.5}
    (tmp_path / "fit.json").write_text(json.dumps({"params": params}))
    with pytest.raises(ConfigError, match=r"market.calibration: .*params.v0 must be a finite"):
        config_from_dict({"market": {"model": "heston", "calibration": "fit.json"}},
                         base_dir=tmp_path)  # fmt: skip


def test_a_config_or_calibration_file_that_is_not_text_names_the_file(tmp_path):
    # bytes that are no UTF-8 were a UnicodeDecodeError traceback on the command line
    (tmp_path / "cfg.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"cannot read config .*cfg\.yaml"):
        load_config(tmp_path / "cfg.yaml")
    (tmp_path / "fit.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"market.calibration: cannot read params from .*fit"):
        config_from_dict({"market": {"model": "heston", "calibration": "fit.json"}},
                         base_dir=tmp_path)  # fmt: skip


@pytest.mark.parametrize(
    ("market", "message"),
    [({"model": "heston", "v0": 0.09}, r"market.calibration and market.v0 both set"),
     ({"model": "black_scholes"}, r"market.calibration holds Heston params: it needs model")],
)  # fmt: skip
def test_a_calibration_file_is_not_silently_mixed_with_other_settings(tmp_path, market, message):
    # the file's params replaced an explicit v0 without a word; with black_scholes it was ignored
    params = {"v0": 0.05, "kappa": 2.0, "theta": 0.06, "sigma": 0.4, "rho": -0.5}
    (tmp_path / "fit.json").write_text(json.dumps({"params": params}))
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"market": {**market, "calibration": "fit.json"}}, base_dir=tmp_path)


def test_exponent_notation_in_yaml_is_a_number(tmp_path):
    # PyYAML (YAML 1.1) reads 3e-3, without a dot, as a string: "must be a number, got '3e-3'"
    path = tmp_path / "hedge.yaml"
    path.write_text("training:\n  lr: 3e-3\n")
    assert load_config(path).training.lr == 3e-3


@pytest.mark.parametrize(
    "text, match",
    [("seed: 1\nseed: 2\n", "duplicate key 'seed'"),
     ("market:\n  n_steps: 3\n  cost: 0.0\n  n_steps: 4\n", "duplicate key 'n_steps'"),
     ('{"training": {"lr": 0.1, "lr": 0.2}}', "duplicate key 'lr'"),
     ("market:\n  n_steps: 010\n", r"010 has a leading zero, which YAML 1.1 reads as octal "
                                    r"\(8\): write 10 for the decimal number"),
     ("strategy:\n  hidden: [16, 016]\n", r"016 .* octal \(14\): write 16"),
     ("seed: -0_10\n", r"octal \(-8\): write -10"),
     ("training:\n  epochs: 1:30\n", r"1:30 is a base-60 number in YAML 1.1 \(90\)"),
     ("market:\n  maturity: 1:30.5\n", r"1:30.5 is a base-60 number in YAML 1.1 \(90.5\)")],
)  # fmt: skip
def test_yaml_that_pyyaml_would_misread_is_refused(tmp_path, text, match):
    # PyYAML kept a repeated key's last value (`seed: 1 ... seed: 2` trained seed 2), ran
    # `n_steps: 010` with 8 steps and `epochs: 1:30` with 90, without a word
    path = tmp_path / "hedge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"(?s)cannot read config .*{match}"):
        load_config(path)


def test_leading_zeros_that_read_alike_in_octal_and_decimal_are_accepted(tmp_path):
    path = tmp_path / "hedge.yaml"
    path.write_text("seed: 007\nmarket:\n  n_steps: 0_5\n  volatility: 00.25\n")
    config = load_config(path)
    assert (config.seed, config.market.n_steps, config.market.volatility) == (7, 5, 0.25)


def test_merge_keys_may_still_be_overridden(tmp_path):
    path = tmp_path / "hedge.yaml"
    path.write_text("market:\n  <<: {n_steps: 3, cost: 0.0}\n  n_steps: 4\n")
    config = load_config(path)
    assert (config.market.n_steps, config.market.cost) == (4, 0.0)


TWO_INSTRUMENTS = {"model": "heston", "instruments": ["underlying", "variance_swap"]}


@pytest.mark.parametrize(
    ("data", "match"),
    [({"market": {**TWO_INSTRUMENTS, "cost": [1e-3, float("nan")]}},
      r"^market\.cost\[1\] must be a finite number, got nan$"),
     ({"market": {**TWO_INSTRUMENTS, "cost": [1e-3, float("inf")]}},
      r"^market\.cost\[1\] must be a finite number, got inf$"),
     ({"market": {**TWO_INSTRUMENTS, "cost": [1e-3, True]}},
      r"^market\.cost\[1\] must be a number, got True$"),
     ({"market": {**TWO_INSTRUMENTS, "cost": [1e-3, -1e-3]}},
      r"^market\.cost\[1\] must be >= 0, got -0\.001$"),
     ({"market": {"cost": "10bp"}}, r"^market\.cost must be a number, got '10bp'$"),
     ({"training": {"threads": True}}, r"^training\.threads must be an integer, got True$"),
     ({"baselines": {"ww_risk_aversion": "high"}},
      r"^baselines\.ww_risk_aversion must be a number, got 'high'$")],
)  # fmt: skip
def test_a_bad_value_of_a_union_field_names_the_element_and_the_reason(data, match):
    # every union field said only "market.cost has the wrong type: [0.001, nan]"
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_numbers_past_the_float_range_are_refused_naming_the_key(tmp_path):
    # YAML's 1e400 (a string to PyYAML) became inf after the finite check and trained with an
    # infinite learning rate; an integer of 400 digits was an OverflowError traceback
    path = tmp_path / "hedge.yaml"
    path.write_text("training:\n  lr: 1e400\n")
    with pytest.raises(ConfigError, match=r"training\.lr must be a finite number, got '1e400'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^market\.spot must be a finite number"):
        config_from_dict({"market": {"spot": 10**400}})


@pytest.mark.parametrize(
    ("data", "match"),
    [({"market": {"v0": 0.09, "kappa": 2.0}},
      r"market\.v0 is not a parameter of model black_scholes: remove it or set market\.model"),
     ({"market": {"model": "heston", "volatility": 0.3}},
      r"market\.volatility is not a parameter of model heston"),
     ({"derivative": {"barrier": 1.2}},
      r"derivative\.barrier is for type barrier; the european option has none"),
     ({"derivative": {"type": "asian", "barrier_type": "down_in"}},
      r"derivative\.barrier_type is for type barrier; the asian option has none"),
     ({"derivative": {"type": "lookback", "strike": 1.2}},
      r"derivative\.strike is not a term of the floating-strike lookback .*: remove it, got 1\.2"),
     ({"objective": {"name": "entropic", "alpha": 0.99}},
      r"objective\.alpha is the es objective's level; entropic has none")],
)  # fmt: skip
def test_settings_the_chosen_model_derivative_or_objective_ignores_are_refused(data, match):
    # each trained without a word on what the config did not say: Heston parameters without
    # model: heston simulated Black-Scholes at vol 0.2, a barrier without type barrier sold a
    # european, an alpha for the entropic objective was never read, a lookback's strike (it
    # has none) only moved its moneyness features
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_settings_equal_to_the_defaults_or_used_by_the_choice_are_accepted():
    config_from_dict({"market": {"model": "heston", "volatility": 0.2, "v0": 0.09}})
    config_from_dict({"derivative": {"type": "barrier", "barrier": 1.2, "barrier_type": "up_in"}})
    config_from_dict({"objective": {"name": "entropic", "risk_aversion": 2.0}})
    config_from_dict({"objective": {"name": "es", "alpha": 0.99}})
