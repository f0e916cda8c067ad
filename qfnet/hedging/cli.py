"""``qfnet hedge`` commands: ``train`` and ``backtest`` (a typer sub-app, mounted by qfnet.cli)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import typer

from pricing._validation import json_safe
from qfnet._cli import fail, seed_option

__all__ = ["hedge_app"]

hedge_app = typer.Typer(help="Deep hedging: train a policy, backtest it against baselines.")


@hedge_app.command("train")
def train_command(
    config: Path = typer.Option(..., "--config", help="YAML experiment config."),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    seed: int | None = seed_option(None, "--seed", help="Override the config's seed."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override training.epochs."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Progress bar."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a trained run already in OUT."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue OUT from its last checkpoint (same config, but for training.patience; "
        "--epochs may grow with scheduler none).",
    ),
) -> None:
    """Train the configured hedging policy and write the run to OUT.

    Fixed train/validation paths, early stopping on the validation risk, checkpoints."""
    from qfnet.hedging.config import ConfigError, load_config
    from qfnet.hedging.train import train
    from qfnet.training import NonFiniteLossError
    from qfnet.training.checkpoint import CheckpointError
    from qfnet.training.device import resolve_device

    try:
        cfg = load_config(config)
    except ConfigError as exc:  # bad input, not a misused option: an error line (exit 1)
        raise fail(str(exc)) from exc
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
    if epochs is not None:
        if epochs < 1:
            raise typer.BadParameter("must be >= 1", param_hint="--epochs")
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, epochs=epochs))
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file, not a run directory", param_hint="--out")
    if resume and overwrite:
        raise typer.BadParameter("--resume continues OUT, --overwrite replaces it: pass one",
                                 param_hint="--resume")  # fmt: skip
    if not (overwrite or resume):  # a new run would replace these without a word
        held = "a trained run" if (out / "model.pt").exists() else "an unfinished run"
        if (out / "model.pt").exists() or (out / "checkpoints" / "last.pt").exists():
            # an error line (exit 1), as `train surrogate` and `generate` report a held OUT
            raise fail(f"{out} already holds {held} (--overwrite replaces it, --resume "
                       "continues it)")  # fmt: skip
    try:
        resolve_device(cfg.training.device)  # the Trainer's own check, before any simulation
    except ValueError as exc:
        raise fail(f"{config}: training.{exc}") from exc
    try:
        result = train(cfg, out, progress_bar=progress, resume=resume)
    # CheckpointError: a --resume from a truncated or corrupted checkpoint (it was a traceback)
    except (NonFiniteLossError, CheckpointError, ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    # the saved weights are the best epoch's (early stopping restores them), so is its loss: the
    # last epoch's was reported, after early stopping up to `patience` epochs worse than the model
    losses = [
        v for r in result.history if (v := r.get("val_loss")) is not None and math.isfinite(v)
    ]
    summary = {
        "run": str(out),
        "epochs": len(result.history),
        "val_loss": min(losses, default=None),
        "seconds": round(result.seconds, 3),
    }
    if _is_global_zero():  # under torchrun: one summary line, as `train surrogate` prints
        typer.echo(json.dumps(json_safe(summary), allow_nan=False))


def _is_global_zero() -> bool:
    """Rank 0 of an initialised process group, or no group (one process)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@hedge_app.command("backtest")
def backtest_command(
    run: Path = typer.Option(..., "--run", help="Run directory written by `hedge train`."),
    out: Path = typer.Option(..., "--out", help="Directory for report.json and plots."),
    paths: Path | None = typer.Option(
        None,
        "--paths",
        help="Parquet file (or partitioned folder) of price paths (wide: one row per path, "
        "an optional path column naming it; or long: path, step, spot and "
        "optionally variance, for a Heston run). Without variance a Heston run's vol proxy "
        "stays at its time-0 level.",
    ),
    n_paths: int | None = typer.Option(None, "--n-paths", help="Override paths.test."),
    bootstrap: int = typer.Option(100, "--bootstrap", help="Bootstrap resamples for the CIs."),
    seed: int | None = seed_option(
        None, "--seed", help="Seed of the test paths and the bootstrap (default: the run's seed)."
    ),
) -> None:
    """Backtest the learned policy and the baselines on the same test paths.

    Writes OUT/report.json, a P&L histogram per strategy and a
    hedge-ratio-vs-spot plot."""
    from qfnet.hedging.backtest import run_backtest

    if n_paths is not None and n_paths < 2:  # one path has no std or bootstrap interval
        raise typer.BadParameter("must be >= 2", param_hint="--n-paths")
    if n_paths is not None and paths is not None:  # it was ignored: every file path was used
        raise typer.BadParameter("draws simulated test paths; --paths backtests the whole file",
                                 param_hint="--n-paths")  # fmt: skip
    if bootstrap < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--bootstrap")
    if out.exists() and not out.is_dir():  # was a FileExistsError traceback after the backtest
        raise typer.BadParameter(f"{out} is a file, not a directory", param_hint="--out")
    try:
        report = run_backtest(
            run, out, paths_file=paths, n_paths=n_paths, n_resamples=bootstrap, seed=seed
        )
    except (OSError, ValueError) as exc:  # OSError: e.g. an --out below a file
        raise fail(str(exc)) from exc
    rows = {name: round(report[name]["es95"], 6) for name in report["strategies"]}
    typer.echo(json.dumps(json_safe({"report": str(out / "report.json"), "es95": rows}),
                          allow_nan=False))  # fmt: skip
