"""Surrogate training: reported metrics against a recomputation, exported checkpoints, splits of
fine-tuning runs, and damaged or too small datasets refused by name."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pricing.datasets import generate, load_dataset
from qfnet.surrogate import build_surrogate, load_surrogate, save_surrogate
from qfnet.surrogate_training import (
    _error_summary,
    _split,
    export_checkpoint,
    load_training_tensors,
    train_surrogate,
)

COMMON = {"batch_size": 64, "hidden": (8,), "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def sabr_data(tmp_path_factory):
    # 400 rows: 8 test rows, an even count (the median is then between two of them)
    return generate(tmp_path_factory.mktemp("data") / "sabr", model="sabr", n=400, progress=False)


def _edit_shards(data, out, edit) -> None:
    """Copy the dataset ``data`` to ``out`` with ``edit(frame)`` applied to each shard, as one
    written before the shards' SHA-256s were recorded (with them, load_dataset refuses an edited
    shard first)."""
    out.mkdir()
    meta = json.loads((data / "metadata.json").read_text())
    del meta["shard_sha256"]
    (out / "metadata.json").write_text(json.dumps(meta))
    for shard in sorted(data.glob("shard-*.parquet")):
        edit(pd.read_parquet(shard)).to_parquet(out / shard.name, index=False)


def test_error_summary_median_is_the_middle_of_an_even_count():
    # torch.median gave the lower middle value: 2.0 here, 111.8 bp for a median of 114.5
    summary = _error_summary(torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64))
    assert summary["median_bp"] == pytest.approx(2.5, rel=1e-15)
    assert summary["p99_bp"] == pytest.approx(np.quantile([1.0, 2.0, 3.0, 10.0], 0.99), rel=1e-15)


def test_an_interrupted_error_histogram_write_keeps_the_previous_plot(tmp_path, fill_the_disk):
    # error_hist.png was written in place: a failure midway (a full disk) left it cut short
    from qfnet.surrogate_training import _plot_error_histogram

    path = tmp_path / "error_hist.png"
    errors = torch.tensor([0.5, 2.0, 30.0], dtype=torch.float64)
    _plot_error_histogram(errors, path)
    before = path.read_bytes()

    fill_the_disk()
    with pytest.raises(OSError, match="No space left"):
        _plot_error_histogram(errors, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["error_hist.png"]  # no temporary left


def test_reported_test_errors_match_a_recomputation_from_the_saved_model(sabr_data, tmp_path):
    summary = train_surrogate(sabr_data, tmp_path / "run", epochs=1, **COMMON)
    frame, _ = load_dataset(sabr_data)
    test_idx = _split(len(frame), 0.02, 0.02, seed=0)[2].numpy()
    rows = frame.iloc[test_idx]
    net = load_surrogate(tmp_path / "run")
    x = torch.tensor(rows[list(net.domain.input_names)].to_numpy())
    with torch.no_grad():
        errors = (net(x).numpy() - rows["implied_vol"].to_numpy()).__abs__() * 1e4
    assert summary["test"]["n"] == len(errors) == 8
    for key, value in (("mae_bp", errors.mean()), ("median_bp", np.median(errors)),
                       ("p99_bp", np.quantile(errors, 0.99)), ("max_bp", errors.max())):  # fmt: skip
        assert summary["test"][key] == pytest.approx(value, rel=1e-12), key


def test_exported_best_checkpoint_is_the_best_validation_epoch_and_says_which(sabr_data, tmp_path):
    # its file said epoch 6 for metrics.csv's epoch 5 (the loop position after that epoch)
    train_surrogate(sabr_data, tmp_path / "run", epochs=3, lr=0.05, **COMMON)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    best = int(metrics["val_loss"].idxmin())
    net = load_surrogate(export_checkpoint(tmp_path / "run", which="best"))
    assert net.training_summary["epoch"] == metrics["epoch"][best]
    assert net.training_summary["epoch_complete"] is True
    x, iv, _, _ = load_training_tensors(sabr_data)
    val_idx = _split(len(iv), 0.02, 0.02, seed=0)[1]
    with torch.no_grad():
        val_loss = float(((net(x[val_idx]) - iv[val_idx]) * 1e4).pow(2).mean())
    assert val_loss == pytest.approx(metrics["val_loss"][best], rel=1e-9)
    last = load_surrogate(export_checkpoint(tmp_path / "run", which="last")).training_summary
    assert (last["epoch"], last["global_step"]) == (2, int(metrics["step"].iloc[-1]))


def test_fine_tuning_on_the_init_runs_dataset_with_another_split_is_refused(sabr_data, tmp_path):
    # --init from a seed-0 run with --seed 1 tested on rows the first run had trained on
    train_surrogate(sabr_data, tmp_path / "first", epochs=1, **COMMON)
    tune = {"epochs": 1, "lr": 1e-4, "init": tmp_path / "first", **COMMON}
    with pytest.raises(ValueError, match=r"with --seed 0, not 1: another split"):
        train_surrogate(sabr_data, tmp_path / "tuned", seed=1, **tune)
    with pytest.raises(ValueError, match=r"with test_fraction 0.02, not 0.05"):
        train_surrogate(sabr_data, tmp_path / "tuned", test_fraction=0.05, **tune)
    assert train_surrogate(sabr_data, tmp_path / "tuned", **tune)["seed"] == 0
    # a file written before the split was recorded: its data path, seed and row counts
    first = load_surrogate(tmp_path / "first")
    old = {k: v for k, v in first.training_summary.items() if k not in ("dataset", "split")}
    legacy = save_surrogate(first, tmp_path / "legacy.pt", training=old)
    with pytest.raises(ValueError, match=r"split into \{'train': 384, 'val': 8, 'test': 8\}"):
        train_surrogate(sabr_data, tmp_path / "again", **{**tune, "init": legacy},
                        test_fraction=0.05)  # fmt: skip


def test_fine_tuning_from_an_exported_checkpoint_keeps_its_runs_split(sabr_data, tmp_path):
    # the exported file recorded no dataset nor split: --init model_best.pt with --seed 1 was
    # accepted, and tested on rows the seed-0 run had trained on
    train_surrogate(sabr_data, tmp_path / "first", epochs=1, **COMMON)
    best = export_checkpoint(tmp_path / "first", which="best")
    tune = {"epochs": 1, "lr": 1e-4, "init": best, **COMMON}
    with pytest.raises(ValueError, match=r"with --seed 0, not 1: another split"):
        train_surrogate(sabr_data, tmp_path / "tuned", seed=1, **tune)
    assert train_surrogate(sabr_data, tmp_path / "tuned", **tune)["seed"] == 0


def test_fine_tuning_on_a_dataset_of_the_init_runs_seed_and_another_size_is_refused(
    sabr_data, tmp_path
):
    # a dataset of the same generation seed holds the same points (the smaller one is the
    # first rows of the larger) but was split otherwise: 9 of the 16 test rows of a 800-point
    # fine-tuning run had been training rows of the 400-point init run
    train_surrogate(sabr_data, tmp_path / "first", epochs=1, **COMMON)
    tune = {"epochs": 1, "lr": 1e-4, "init": tmp_path / "first", **COMMON}
    larger = generate(tmp_path / "larger", model="sabr", n=800, seed=0, progress=False)
    with pytest.raises(ValueError, match=r"same generation seed 0 \(n 400\).*\(n 800\)"):
        train_surrogate(larger, tmp_path / "tuned", **tune)
    other = generate(tmp_path / "other", model="sabr", n=800, seed=1, progress=False)
    assert train_surrogate(other, tmp_path / "tuned", **tune)["rows"]["test"] == 16


class _StopAtStep:
    """Interrupts training (as Ctrl-C does) after ``step`` optimizer steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer) -> None:
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


def test_an_overwriting_run_stopped_early_leaves_nothing_of_the_replaced_run(sabr_data, tmp_path):
    # the old run's model.pt and checkpoints stayed beside the new run's configuration:
    # --resume continued the old run's weights, and model.pt was the old run's
    run = tmp_path / "run"
    train_surrogate(sabr_data, run, epochs=2, **COMMON)
    with pytest.raises(KeyboardInterrupt):
        train_surrogate(sabr_data, run, epochs=3, overwrite=True, callbacks=[_StopAtStep(2)],
                        **COMMON)  # fmt: skip
    assert not (run / "model.pt").exists()
    assert not list((run / "checkpoints").glob("*.pt"))
    with pytest.raises(ValueError, match=r"no checkpoint to resume"):
        train_surrogate(sabr_data, run, epochs=3, resume=True, **COMMON)


def test_fewer_validation_rows_than_processes_are_refused_on_every_rank(sabr_data, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    # under torchrun the rank without a validation row failed alone with "validation/test data
    # is empty" (its split held 1 row), and the other rank hung in the next all-reduce
    import qfnet.training.distributed as distributed

    second_of_two = distributed.DistInfo(rank=1, world_size=2)
    monkeypatch.setattr(distributed, "init_distributed", lambda *args: second_of_two)
    with pytest.raises(ValueError, match="validation split holds 1 row, fewer than the 2"):
        train_surrogate(sabr_data, tmp_path / "run", epochs=1, val_fraction=0.002, **COMMON)


def test_a_dataset_without_two_training_rows_is_refused_naming_the_counts(tmp_path):
    # 3 rows left one training row: NaN scalers, then a "non-finite loss" at step 0
    data = generate(tmp_path / "ds", model="sabr", n=3, progress=False)
    with pytest.raises(ValueError, match=r"leave 1 training rows, at least 2 are needed"):
        train_surrogate(data, tmp_path / "run", epochs=1, **COMMON)


def test_fit_scalers_refuses_one_row_or_a_bad_label_and_keeps_its_scalers():
    net = build_surrogate("sabr", hidden=(4,))
    x = torch.tensor([[0.2, 0.5, -0.3, 0.6, 1.0, 0.0], [0.3, 0.5, 0.1, 0.4, 2.0, 0.1]],
                     dtype=torch.float64)  # fmt: skip
    with pytest.raises(ValueError, match=r"at least 2 rows"):
        net.fit_scalers(x[:1], torch.tensor([0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"row 1 has a non-finite input or a non-positive"):
        net.fit_scalers(x, torch.tensor([0.2, -0.1], dtype=torch.float64))
    assert torch.equal(net.in_mean, torch.zeros_like(net.in_mean))
    assert float(net.out_std) == 1.0


def test_a_shard_without_a_parameter_column_is_refused_naming_it(sabr_data, tmp_path):
    # it failed in training as pandas' KeyError "['nu'] not in index"
    _edit_shards(sabr_data, tmp_path / "ds", lambda f: f.drop(columns=["nu"]))
    with pytest.raises(ValueError, match=r"shard-00000.parquet lacks column\(s\) \['nu'\]"):
        load_dataset(tmp_path / "ds")


def test_a_non_finite_input_is_refused_naming_column_and_row(sabr_data, tmp_path):
    # the row was dropped without a word, as if its price had no implied vol
    def nan_rho(frame):
        frame.loc[5, "rho"] = np.nan
        return frame

    _edit_shards(sabr_data, tmp_path / "ds", nan_rho)
    with pytest.raises(ValueError, match=r"column 'rho' is not finite at row 5 \(1 rows"):
        load_training_tensors(tmp_path / "ds")


def test_more_missing_labels_than_generation_recorded_are_refused(sabr_data, tmp_path):
    # a third of the labels NaN'd trained on the rest without a word
    def nan_labels(frame):
        frame.loc[frame.index % 3 == 1, "implied_vol"] = np.nan
        return frame

    _edit_shards(sabr_data, tmp_path / "ds", nan_labels)
    with pytest.raises(
        ValueError, match=r"133 rows .*\(the first at row 1\), its metadata records 0"
    ):
        load_training_tensors(tmp_path / "ds")
    # the rows generation could not label (recorded in the metadata) are dropped, as documented
    meta = json.loads((tmp_path / "ds" / "metadata.json").read_text())
    (tmp_path / "ds" / "metadata.json").write_text(json.dumps({**meta, "unlabelled": 133}))
    _, iv, _, meta = load_training_tensors(tmp_path / "ds")
    assert (len(iv), meta["dropped_rows"]) == (400 - 133, 133)


@pytest.mark.parametrize(
    ("text", "message"),
    [(lambda saved: json.dumps(saved)[:30], r"surrogate_config\.json is not valid JSON"),
     (lambda saved: "[]", r"surrogate_config\.json is not a surrogate run configuration"),
     (lambda saved: json.dumps({k: v for k, v in saved.items() if k != "hidden"}),
      r"surrogate_config\.json: field 'hidden' must be a list of positive layer widths")],
    ids=["cut", "list", "no_hidden"],
)  # fmt: skip
def test_a_damaged_run_configuration_is_named_with_its_field(sabr_data, tmp_path, text, message):
    # a bare JSONDecodeError, TypeError, AttributeError or KeyError named no file
    train_surrogate(sabr_data, tmp_path / "run", epochs=1, **COMMON)
    config = tmp_path / "run" / "surrogate_config.json"
    config.write_text(text(json.loads(config.read_text())))
    with pytest.raises(ValueError, match=message):
        export_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        train_surrogate(sabr_data, tmp_path / "run", epochs=1, resume=True, **COMMON)


@pytest.mark.parametrize(
    ("edit", "message"),
    [({"hidden": [16]}, r"Error\(s\) in loading state_dict for SurrogateNet: size mismatch"),
     ({"activation": "nonsense"}, r"activation must be one of")],
    ids=["other_widths", "unknown_activation"],
)  # fmt: skip
def test_export_names_a_checkpoint_that_does_not_fit_the_run_configuration(
    sabr_data, tmp_path, edit, message
):
    # torch's RuntimeError (size mismatch) or the activation's ValueError named neither file
    from qfnet.training.checkpoint import ModelFileError

    train_surrogate(sabr_data, tmp_path / "run", epochs=1, **COMMON)
    config = tmp_path / "run" / "surrogate_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | edit))
    with pytest.raises(ModelFileError, match=r"checkpoints/best\.pt does not fit the run's "
                       r"surrogate_config\.json \(an edited file\?\): " + message):  # fmt: skip
        export_checkpoint(tmp_path / "run")


def test_a_run_configuration_that_is_not_text_is_named(sabr_data, tmp_path):
    # bytes that are no UTF-8 were a bare "'utf-8' codec can't decode", naming no file
    train_surrogate(sabr_data, tmp_path / "run", epochs=1, **COMMON)
    (tmp_path / "run" / "surrogate_config.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"surrogate_config\.json is not a JSON text file"):
        train_surrogate(sabr_data, tmp_path / "run", epochs=1, resume=True, **COMMON)


def test_resuming_on_a_dataset_drawn_from_another_box_is_refused(tmp_path):
    # a dataset of another generation --margin has the run's domain, size, seed, engine and here
    # as many rows: the resumed run trained on its points without a word
    data = generate(tmp_path / "ds", model="sabr", n=64, progress=False)
    wider = generate(tmp_path / "wide", model="sabr", n=64, progress=False, margin=0.01)
    assert load_training_tensors(wider)[1].numel() == load_training_tensors(data)[1].numel()
    train_surrogate(data, tmp_path / "run", epochs=1, **COMMON)
    with pytest.raises(ValueError, match=r"trained on points drawn from another box \(the "
                       r"dataset's sampling_domain: another generation --margin\)"):  # fmt: skip
        train_surrogate(wider, tmp_path / "run", epochs=1, resume=True, **COMMON)
    train_surrogate(data, tmp_path / "run", epochs=1, resume=True, **COMMON)  # its own: resumed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden": (16, 8)}, "--hidden 8, not 16,8"),
        ({"activation": "tanh"}, "activation 'silu', not 'tanh'"),
    ],
)
def test_resuming_with_another_architecture_is_refused(sabr_data, tmp_path, change, message):
    # other layer widths were dropped silently for the run's own (another --lr was named)
    train_surrogate(sabr_data, tmp_path / "run", epochs=1, **COMMON)
    with pytest.raises(ValueError, match=rf"started with {message}; resume with the same value"):
        train_surrogate(sabr_data, tmp_path / "run", epochs=1, resume=True, **(COMMON | change))


class _StopAfterEpoch:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer) -> None:
        if trainer.epoch >= self.epoch:
            trainer.should_stop = True


def test_the_summary_counts_the_epochs_trained_when_a_callback_stops_early(sabr_data, tmp_path):
    # it recorded the epochs asked for: 5 for a run stopped after its second
    summary = train_surrogate(sabr_data, tmp_path / "run", epochs=5,
                              callbacks=[_StopAfterEpoch(1)], **COMMON)  # fmt: skip
    assert (summary["epochs"], summary["max_epochs"]) == (2, 5)
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 2
