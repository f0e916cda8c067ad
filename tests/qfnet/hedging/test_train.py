"""Training through the shared Trainer: learns the delta hedge without costs, reproducible."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable

import pytest
import torch

from qfnet.hedging.config import ConfigError, config_from_dict
from qfnet.hedging.markets import Market, pack
from qfnet.hedging.pnl import run_strategy
from qfnet.hedging.strategies import BlackScholesDelta
from qfnet.hedging.train import (
    PathSet,
    build_model,
    hedge_forward,
    load_run,
    make_paths,
    train,
)
from qfnet.training import NonFiniteLossError, Trainer, TrainerConfig
from qfnet.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _tiny(**overrides: dict) -> dict:
    base = {
        "seed": 3,
        "market": {"n_steps": 8, "cost": 1.0e-3},
        "paths": {"train": 2000, "val": 1000, "test": 1000},
        "strategy": {"type": "ntb", "hidden": [8]},
        "training": {"epochs": 2, "batch_size": 500, "threads": 1},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def test_learned_hedge_recovers_delta_hedge_std_without_costs() -> None:
    """Zero cost, 40 steps, variance objective, a policy that starts from no hedge at all (no
    delta reference): after training its P&L std is within 10% of the delta hedge's."""
    config = config_from_dict(
        _tiny(
            market={"n_steps": 40, "cost": 0.0},
            paths={"train": 12_000, "val": 1000, "test": 8000},
            strategy={"type": "gru", "hidden": [16], "reference": "none"},
            objective={"name": "variance"},
            training={"epochs": 6, "batch_size": 500, "lr": 0.02, "patience": 6},
            baselines={"ww_risk_aversion": 1.0},
        )
    )
    market = Market(config)
    test, _ = make_paths(market, config.paths.test, split="test", seed=config.seed)
    result = train(config)
    learned = run_strategy(result.model.strategy, test, market).pnl.std().item()
    delta = run_strategy(BlackScholesDelta(), test, market).pnl.std().item()
    assert abs(learned / delta - 1.0) < 0.10
    no_hedge = test.payoff.std().item()
    assert no_hedge > 5 * delta  # the untrained policy (positions ~ 0) would fail the test


def test_training_is_reproducible_by_seed_and_writes_a_loadable_run(tmp_path) -> None:
    config = config_from_dict(_tiny())
    first = train(config, tmp_path / "run")
    second = train(config)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    other = train(config_from_dict(_tiny(seed=4)))
    assert not torch.equal(
        first.model.strategy.policy.mlp.head.bias, other.model.strategy.policy.mlp.head.bias
    )
    for name in ("model.pt", "hedge_config.json", "metrics.csv", "checkpoints/best.pt"):
        assert (tmp_path / "run" / name).exists(), name
    loaded_config, model, meta = load_run(tmp_path / "run")
    assert loaded_config == config
    assert meta["ww_risk_aversion"] > 0
    market = Market(config)
    data, _ = make_paths(market, 100, split="test", seed=0)
    torch.testing.assert_close(
        model.strategy.positions(data), first.model.strategy.positions(data), rtol=0, atol=0
    )


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path) -> None:
    # there was no resume: a killed run restarted from scratch
    small = {"paths": {"train": 400, "val": 200, "test": 200}, "baselines": {"ww_risk_aversion": 1}}
    straight = train(config_from_dict(_tiny(**small)), tmp_path / "straight")
    train(config_from_dict(_tiny(**small, training={"epochs": 1})), tmp_path / "cut")
    resumed = train(config_from_dict(_tiny(**small)), tmp_path / "cut", resume=True)
    assert len(resumed.history) == len(straight.history) == 2
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match=r"another seed than this config's"):
        train(config_from_dict(_tiny(**small, seed=9)), tmp_path / "cut", resume=True)
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        train(config_from_dict(_tiny(**small)), tmp_path / "empty", resume=True)


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_resuming_a_planned_schedule_with_other_epochs_names_the_epochs(tmp_path, scheduler):
    # the Trainer's refusal named its max_epochs, which neither the config nor the CLI has
    small = {"paths": {"train": 400, "val": 200, "test": 200}, "baselines": {"ww_risk_aversion": 1}}
    train(config_from_dict(_tiny(**small, training={"epochs": 1, "scheduler": scheduler})),
          tmp_path / "run")  # fmt: skip
    longer = config_from_dict(_tiny(**small, training={"epochs": 2, "scheduler": scheduler}))
    with pytest.raises(ValueError, match=r"training\.epochs 1, .* \(--epochs 1\)"):
        train(longer, tmp_path / "run", resume=True)


def test_tail_only_forward_gives_the_full_expected_shortfall_gradient() -> None:
    config = config_from_dict(_tiny(training={"dtype": "float64"}))
    market = Market(config)
    data, _ = make_paths(market, 3000, split="train", seed=0)
    packed = pack(data)
    torch.manual_seed(0)
    model = build_model(config, market)
    model.train()
    model.risk_loss(model(packed)).backward()  # sets the VaR level from this batch
    with torch.no_grad():
        model.risk.var_level.sub_(0.002)  # a level off the sample VaR: more paths in the tail
    grads = []
    for tail_only in (False, True):
        model.zero_grad()
        model.tail_only = tail_only
        loss = model.risk_loss(model(packed))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_full, g_full), (loss_tail, g_tail) = grads
    torch.testing.assert_close(loss_tail, loss_full, rtol=1e-12, atol=0)
    for a, b in zip(g_tail, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    assert any(g.abs().sum() > 0 for g in g_full)


@pytest.mark.parametrize(
    "objective", [{"name": "entropic", "risk_aversion": 10.0}, {"name": "variance"}]
)
def test_val_loss_is_the_risk_of_the_whole_validation_set(objective) -> None:
    # 1000 validation paths, training batches of 300: the mean of the risks of 4 batches was
    # below the set's (Jensen: by 1.7e-5 relative for the entropic risk, 1.5e-3 for the variance)
    config = config_from_dict(
        _tiny(
            objective=objective,
            training={"epochs": 1, "batch_size": 300, "dtype": "float64"},
            baselines={"ww_risk_aversion": 1.0},
        )
    )
    result = train(config)  # one epoch: the model holds the weights that were validated
    val, _ = make_paths(Market(config), config.paths.val, split="val", seed=config.seed)
    with torch.no_grad():
        whole = result.model.eval().risk_loss(result.model(pack(val).double())).item()
    assert result.history.records[-1]["val_loss"] == pytest.approx(whole, rel=1e-12, abs=0)


@pytest.mark.parametrize("objective", ["es", "entropic"])
def test_a_path_of_infinite_pnl_stops_training_at_its_step(objective: str) -> None:
    # one +inf P&L added 0 to the ES tail term and to the entropic exponential: the loss stayed
    # finite and the NaN guard let training run on (a NaN or -inf path stopped it)
    config = config_from_dict(_tiny(objective={"name": objective}))
    market = Market(config)
    data, _ = make_paths(market, 64, split="train", seed=0)
    data = data._replace(payoff=data.payoff.clone().index_fill_(0, torch.tensor([5]), -math.inf))
    model = build_model(config, market)
    trainer = Trainer(model, loss=model.risk_loss, forward=hedge_forward, config=TrainerConfig(
        max_epochs=1, batch_size=64, tensorboard=False, progress_bar=False))  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at epoch 0, step 0 "):
        trainer.fit(PathSet(pack(data).float()))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory):
    config = config_from_dict({"market": {"n_steps": 5}, "paths": {"train": 64, "val": 32,
                               "test": 32}, "training": {"epochs": 1, "batch_size": 32},
                               "baselines": {"ww_risk_aversion": 1.0}})  # fmt: skip
    run = tmp_path_factory.mktemp("hedge") / "run"
    train(config, run)
    return run


def _damaged_run(run, tmp_path, edit):
    """A copy of ``run`` whose model.pt payload is ``edit``-ed (in place)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    payload = torch.load(copy / "model.pt", weights_only=True)
    edit(payload)
    torch.save(payload, copy / "model.pt")
    return copy


def test_load_run_refuses_a_model_file_with_a_damaged_byte(small_run, tmp_path) -> None:
    # torch.load checks no CRC: a flipped bit in a weight loaded as another weight, silently
    marker = torch.full((8,), 1234.5678, dtype=torch.float64)
    run = _damaged_run(small_run, tmp_path, lambda p: p.update(marker=marker))
    data = bytearray((run / "model.pt").read_bytes())
    data[bytes(data).index(marker.numpy().tobytes()) + 3] ^= 0x01
    (run / "model.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model\.pt is not a readable trained hedging model: "
                       r"corrupted or tampered with, CRC mismatch"):  # fmt: skip
        load_run(run)


def test_load_run_names_a_directory_in_the_place_of_model_pt(tmp_path) -> None:
    # "truncated or corrupted, not a valid archive ([Errno 21] Is a directory: ...)"
    from qfnet.training.checkpoint import ModelFileError

    (tmp_path / "model.pt").mkdir()
    with pytest.raises(ModelFileError, match=r"model\.pt is a directory, not a trained hedging "
                       "model file$"):  # fmt: skip
        load_run(tmp_path)


@pytest.mark.parametrize(
    ("edit", "error", "message"),
    [(lambda p: p.update(config=json.dumps({"market": {"n_steps": -1}})), ConfigError,
      r"model\.pt: the saved config: market\.n_steps must be > 0"),
     (lambda p: p.update(ww_risk_aversion="high"), ValueError,
      r"model\.pt: field 'ww_risk_aversion' must be a number, got 'high'"),
     (lambda p: p.pop("train_seconds"), ValueError, r"model\.pt is not a readable trained "
      r"hedging model: no field 'train_seconds'")],
    ids=["bad_config", "text_risk_aversion", "no_train_seconds"],
)  # fmt: skip
def test_load_run_names_the_file_and_field_of_a_damaged_payload(
    small_run, tmp_path, edit, error, message
) -> None:
    # the saved config's error named a key but not the file; a text risk aversion loaded and
    # failed later, in the backtest's Whalley-Wilmott baseline
    with pytest.raises(error, match=message):
        load_run(_damaged_run(small_run, tmp_path, edit))


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0])
def test_load_run_refuses_a_risk_aversion_that_is_not_finite_and_positive(
    small_run, tmp_path, value
) -> None:
    # it loaded, and the backtest's Whalley-Wilmott baseline failed later, naming no file
    with pytest.raises(ValueError, match=r"model\.pt: field 'ww_risk_aversion' must be finite "
                       rf"and > 0 \(as baselines\.ww_risk_aversion\), got {value}"):  # fmt: skip
        load_run(_damaged_run(small_run, tmp_path, lambda p: p.update(ww_risk_aversion=value)))


def _config_edit(section: str, key: str, value) -> Callable[[dict], None]:
    """An edit of a ``model.pt`` payload (:func:`_damaged_run`) setting its saved config's
    ``section.key`` to ``value``."""

    def edit(payload: dict) -> None:
        config = json.loads(payload["config"])
        config[section][key] = value
        payload["config"] = json.dumps(config)

    return edit


def test_load_run_refuses_weights_trained_at_another_cost_than_its_config(small_run, tmp_path):
    # an edited market.cost loaded: the backtest ran the policy, trained at the weights' cost,
    # at the config's as if trained for it
    edit = _config_edit("market", "cost", 0.01)
    with pytest.raises(ValueError, match=r"model\.pt: the weights' cost \[0\.001\] is not the "
                       r"saved config's market\.cost \[0\.01\]$"):  # fmt: skip
        load_run(_damaged_run(small_run, tmp_path, edit))


def test_resuming_a_run_whose_saved_config_is_no_object_names_the_file(small_run, tmp_path):
    # a JSON list there was a bare AttributeError ('list' object has no attribute 'get')
    config, _, _ = load_run(small_run)
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "hedge_config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"hedge_config\.json is not a config"):
        train(config, run, resume=True)


def test_resuming_a_run_whose_saved_config_is_not_text_names_the_file(small_run, tmp_path):
    # bytes that are no UTF-8 were a bare "'utf-8' codec can't decode", naming no file
    config, _, _ = load_run(small_run)
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    (run / "hedge_config.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"cannot read the run's hedge_config\.json"):
        train(config, run, resume=True)


def test_load_run_of_weights_another_network_names_the_mismatch(small_run, tmp_path) -> None:
    # the message stopped at torch's header, "Error(s) in loading state_dict for HedgeModel:"
    edit = _config_edit("strategy", "hidden", [8])
    with pytest.raises(ValueError, match=r"HedgeModel: Unexpected key\(s\) in state_dict"):
        load_run(_damaged_run(small_run, tmp_path, edit))


def test_load_run_of_a_config_of_another_version_says_so(small_run, tmp_path) -> None:
    edit = _config_edit("market", "jump_intensity", 0.1)
    with pytest.raises(ConfigError, match=r"model\.pt: the saved config: unknown key "
                       r"'market\.jump_intensity'.*another qfnet version"):  # fmt: skip
        load_run(_damaged_run(small_run, tmp_path, edit))


@pytest.mark.parametrize(
    ("edit", "message"),
    [(lambda p: p.update(format_version=3), r"'qfnet-hedge-run' version 3; this qfnet reads"),
     (lambda p: p.update(format_version=True), r"version True; this qfnet reads"),
     (lambda p: p.update(format="other-tool"), r"'other-tool' version 2; this qfnet reads")],
    ids=["newer", "bool", "other_writer"],
)  # fmt: skip
def test_load_run_refuses_another_format_version(small_run, tmp_path, edit, message) -> None:
    # model.pt had no format version: a later qfnet's run (other features) loaded as this one's
    with pytest.raises(ValueError, match=message):
        load_run(_damaged_run(small_run, tmp_path, edit))


def test_load_run_reads_a_run_saved_before_the_format_fields(small_run, tmp_path) -> None:
    def edit(payload):
        del payload["format"], payload["format_version"]

    config, _, _ = load_run(_damaged_run(small_run, tmp_path, edit))
    assert config == load_run(small_run)[0]


@pytest.fixture(scope="module")
def lookback_run(tmp_path_factory: pytest.TempPathFactory):
    config = config_from_dict({"market": {"n_steps": 5, "spot": 100.0},
                               "derivative": {"type": "lookback"},
                               "paths": {"train": 64, "val": 32, "test": 32},
                               "training": {"epochs": 1, "batch_size": 32},
                               "baselines": {"ww_risk_aversion": 1.0}})  # fmt: skip
    run = tmp_path_factory.mktemp("lookback") / "run"
    train(config, run)
    return run


@pytest.mark.parametrize(("strike", "loads"), [(None, False), (100.0, True), (90.0, False)])
def test_a_lookback_run_of_an_earlier_qfnet_loads_only_where_its_features_are_the_same(
    lookback_run, tmp_path, strike, loads
) -> None:
    # version 1 measured the lookback's moneyness features against derivative.strike, this
    # qfnet against market.spot: a run at spot 100 and the default strike 1 loaded without a
    # word, its policy fed a first feature of 0 and d1 of 0.03 for the 81 and 6 it trained on
    def edit(payload):
        config = json.loads(payload["config"])
        if strike is None:
            config["derivative"].pop("strike")  # the default, 1
        else:
            config["derivative"]["strike"] = strike
        payload.update(format_version=1, config=json.dumps(config))

    old = _damaged_run(lookback_run, tmp_path, edit)
    if loads:  # features against 100 either way: read at the (unused) default strike
        config, _, _ = load_run(old)
        assert config == load_run(lookback_run)[0]
    else:
        shown = 1.0 if strike is None else strike
        with pytest.raises(ConfigError, match=rf"model\.pt: the saved config: derivative\.strike "
                           rf"{shown} of a floating-strike lookback: an earlier qfnet measured "
                           r"the policy's moneyness features against it, this one against "
                           r"market\.spot 100\.0"):  # fmt: skip
            load_run(old)


@pytest.mark.parametrize(("strike", "resumes"), [(100.0, True), (90.0, False)])
def test_resuming_a_lookback_run_that_an_earlier_qfnet_gave_a_strike(
    lookback_run, tmp_path, strike, resumes
) -> None:
    # the config's strike is refused for a lookback, and without it the resume was refused for
    # "another derivative.strike than this config's: resume it with its own config"
    run = tmp_path / "run"
    shutil.copytree(lookback_run, run)
    saved = json.loads((run / "hedge_config.json").read_text())
    saved["derivative"]["strike"] = strike
    (run / "hedge_config.json").write_text(json.dumps(saved))
    config = load_run(lookback_run)[0]
    if resumes:  # the features it trained on are this qfnet's
        assert len(train(config, run, resume=True).history) == 1
    else:
        with pytest.raises(ValueError, match=r"hedge_config\.json: derivative\.strike 90\.0 of "
                           r"a floating-strike lookback: .*: train a new run"):  # fmt: skip
            train(config, run, resume=True)


def test_a_resumed_run_reports_the_seconds_trained_before_the_resume(tmp_path, monkeypatch):
    # `seconds` (and model.pt's train_seconds) counted only the time since the resume, while
    # `epochs` counted the whole run's. A fake clock, advanced 100 s by every fit, is what each
    # call trains for.
    import types

    import qfnet.hedging.train

    now = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: now[0], process_time=lambda: now[0] / 2)
    monkeypatch.setattr(qfnet.hedging.train, "time", clock)
    fit = Trainer.fit

    def slow_fit(self, *args, **kwargs):
        now[0] += 100.0
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", slow_fit)
    small = {"paths": {"train": 400, "val": 200, "test": 200}, "baselines": {"ww_risk_aversion": 1}}
    cut = train(config_from_dict(_tiny(**small, training={"epochs": 1})), tmp_path / "run")
    resumed = train(config_from_dict(_tiny(**small)), tmp_path / "run", resume=True)
    assert (cut.seconds, cut.cpu_seconds) == pytest.approx((100.0, 50.0), rel=0, abs=1e-9)
    assert (resumed.seconds, resumed.cpu_seconds) == pytest.approx((200.0, 100.0), rel=0, abs=1e-9)
    assert load_run(tmp_path / "run")[2]["train_seconds"] == pytest.approx(200.0, rel=0, abs=1e-9)


def test_resuming_a_run_whose_saved_derivative_is_no_object_names_the_key(small_run, tmp_path):
    # the check for an earlier qfnet's lookback strike read it with .get: a JSON list there was
    # a bare AttributeError ('list' object has no attribute 'get')
    config, _, _ = load_run(small_run)
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    saved = json.loads((run / "hedge_config.json").read_text())
    (run / "hedge_config.json").write_text(json.dumps(saved | {"derivative": [1.2]}))
    with pytest.raises(ValueError, match=r"was trained with another derivative than this"):
        train(config, run, resume=True)


def test_a_run_that_early_stopping_ended_trains_on_when_resumed_with_a_larger_patience(tmp_path):
    # EarlyStopping's warning on resuming the stopped run says to resume with a larger patience,
    # which resume refused: "trained with another training.patience ... (only training.epochs
    # may change)"
    small = {"paths": {"train": 256, "val": 64, "test": 64}, "baselines": {"ww_risk_aversion": 1}}
    run = {"epochs": 4, "batch_size": 64, "lr": 0.05}
    stopped = train(config_from_dict(_tiny(**small, training=run | {"patience": 1})), tmp_path)
    assert len(stopped.history) < 4  # stopped early
    patient = config_from_dict(_tiny(**small, training=run | {"patience": 10}))
    resumed = train(patient, tmp_path, resume=True)
    assert len(resumed.history) == 4
    assert load_run(tmp_path)[0] == patient


def test_resuming_a_run_with_fewer_epochs_than_it_trained_is_refused_keeping_its_files(tmp_path):
    # nothing was trained, and the run's model.pt and hedge_config.json were saved again with
    # the fewer epochs, as a run of 1 epoch that had trained 2; refused after the Trainer ran,
    # the run's config.json said max_epochs 1 and a second TensorBoard file was written
    small = {"paths": {"train": 400, "val": 200, "test": 200}, "baselines": {"ww_risk_aversion": 1}}
    config = config_from_dict(_tiny(**small))
    train(config, tmp_path)
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    shorter = config_from_dict(_tiny(**small, training={"epochs": 1}))
    with pytest.raises(ValueError, match=r"has trained 2 epochs, more than training\.epochs 1"):
        train(shorter, tmp_path, resume=True)
    assert load_run(tmp_path)[0] == config
    assert json.loads((tmp_path / "hedge_config.json").read_text())["training"]["epochs"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["max_epochs"] == 2
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_resuming_from_a_checkpoint_without_a_history_names_the_missing_field(tmp_path) -> None:
    # the epoch count read before the Trainer starts failed with a bare KeyError: 'history'
    small = {"paths": {"train": 400, "val": 200, "test": 200}, "baselines": {"ww_risk_aversion": 1}}
    config = config_from_dict(_tiny(**small))
    train(config, tmp_path)
    last = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["history"]
    save_checkpoint(state, last)
    with pytest.raises(CheckpointError, match=r"lacks the field\(s\) \['history'\]"):
        train(config_from_dict(_tiny(**small, training={"epochs": 3})), tmp_path, resume=True)
