"""CLI commands of the surrogate workflow (mounted by :mod:`qfnet.cli`).

``qfnet generate`` (:func:`generate_command`), ``qfnet train surrogate``
(:func:`train_surrogate_command`) and the row pricer behind ``qfnet price --engine surrogate``
(:func:`surrogate_price_rows`).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer

from pricing import black_scholes
from pricing.datasets import (
    ENGINES,
    NAMED_DOMAINS,
    DomainError,
    ResumeMismatch,
    check_device,
    generate,
)
from pricing.quotes import MISSING_VALUES, forward_and_discount, shifts, short_call_flags
from qfnet._cli import fail, parse_widths, seed_option
from qfnet.surrogate import (
    SurrogateNet,
    _at_unit_forward,
    _given_alpha,
    _implied_vol,
    load_surrogate,
)

__all__ = ["generate_command", "surrogate_price_rows", "train_surrogate_command"]


def generate_command(
    out: Annotated[Path, typer.Option("--out", help="Dataset directory to create.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of labelled options.")],
    model: Annotated[str, typer.Option("--model", help="heston or sabr.")] = "heston",
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="Labels: heston analytic (default), quantlib, mc; sabr hagan (default), quantlib.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Local processes.")] = 1,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Dask scheduler address; overrides --workers."),
    ] = None,
    seed: Annotated[
        int,
        seed_option(
            "--seed",
            help="Seed of the Sobol scrambling: datasets of one seed share their first points "
            "(held-out data needs another seed).",
        ),
    ] = 0,
    shard_size: Annotated[
        int,
        typer.Option(
            "--shard-size",
            min=1,
            help="Options per Parquet shard (one task of --workers or --scheduler each).",
        ),
    ] = 65_536,
    margin: Annotated[
        float,
        # checked below, not by min=0.0: click's range check let NaN by as "Input should be
        # greater than or equal to 0"
        typer.Option("--margin", help="Sample this fraction (>= 0) beyond each domain edge."),
    ] = 0.0,
    device: Annotated[
        str, typer.Option("--device", help="Where workers label: cpu, cuda, cuda:1...")
    ] = "cpu",
    domain: Annotated[
        str | None,
        typer.Option(
            "--domain", help="Parameter box: the model's (default), or sabr-pde (SABR to T = 10 y)."
        ),
    ] = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Heston analytic labels through torch.compile: ~2x faster once compiled "
            "(a one-off compile of seconds to ~30 s per worker); for large datasets.",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted generation in OUT (same options; its shards are kept).",
        ),
    ] = False,
) -> None:
    """Generate labelled training data: Sobol points of a model domain, priced, Parquet shards.

    \f
    Examples:
        The function behind ``qfnet generate``, called directly:

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     generate_command(Path(tmp) / "ds", n=8, model="sabr", shard_size=4)
        wrote 8 sabr options (hagan) in 2 shards to .../ds
    """
    if model not in ENGINES:
        raise typer.BadParameter(f"must be one of {sorted(ENGINES)}", param_hint="--model")
    if engine is not None and engine not in ENGINES[model]:
        raise typer.BadParameter(
            f"for {model} must be one of {sorted(ENGINES[model])}", param_hint="--engine"
        )
    if compile and (model, engine or "analytic") != ("heston", "analytic"):
        raise typer.BadParameter("needs --model heston --engine analytic", param_hint="--compile")
    if not (math.isfinite(margin) and margin >= 0):  # a misused option, as --lr in training
        raise typer.BadParameter(f"{margin}: the margin must be finite and >= 0",
                                 param_hint="--margin")  # fmt: skip
    if domain is not None and (domain not in NAMED_DOMAINS or NAMED_DOMAINS[domain].model != model):
        names = sorted(k for k, v in NAMED_DOMAINS.items() if v.model == model)
        raise typer.BadParameter(f"for {model} must be one of {names}", param_hint="--domain")
    _check_out_folder(out)
    try:
        with warnings.catch_warnings():  # the count of unlabelled rows is in the line below
            warnings.filterwarnings("ignore", message=r".* options got no implied vol")
            path = generate(
                out,
                model=model,
                domain=NAMED_DOMAINS[domain] if domain is not None else None,
                n=n,
                engine=engine,
                seed=seed,
                shard_size=shard_size,
                workers=workers,
                scheduler=scheduler,
                margin=margin,
                device=_checked_device(device),
                compile=compile,
                resume=resume,
            )
    except ResumeMismatch as err:  # named by option, --shard-size (shard_size, a keyword)
        option = lambda keyword: "--" + keyword.replace("_", "-")  # noqa: E731
        raise fail(err.describe(option, flags=True)) from err
    except (OSError, ValueError) as err:  # an existing dataset, a bad --out, a dead scheduler
        raise fail(str(err)) from err
    meta = json.loads((path / "metadata.json").read_text())
    unlabelled = meta.get("unlabelled", 0)
    missing = f", {unlabelled} without a label (NaN; training drops them)" if unlabelled else ""
    shards = "shard" if meta["n_shards"] == 1 else "shards"
    typer.echo(
        f"wrote {meta['n']} {model} options ({meta['engine']}) in {meta['n_shards']} "
        f"{shards} to {path}{missing}"
    )


def _check_out_folder(out: Path) -> None:
    """``--out`` names a folder to write: a file there is a usage error naming the option, as in
    ``hedge train`` (it was a bare "[Errno 17] File exists: ...")."""
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file, not a directory", param_hint="--out")


def _checked_device(device: str) -> str:
    try:
        return check_device(device)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--device") from None


def train_surrogate_command(
    data: Annotated[Path, typer.Option("--data", help="Dataset from `qfnet generate`.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory.")],
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Epochs (the cosine learning-rate decay's span).")
    ] = 100,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue OUT from its checkpoint.")
    ] = False,
    seed: Annotated[
        int,
        seed_option(
            "--seed", help="Seed of the train/val/test split, the weights and the batch order."
        ),
    ] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size.")] = 4096,
    # checked below, as --margin is (click's range check took NaN for a number below 0)
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (> 0).")] = 2e-3,
    hidden: Annotated[
        str | None,
        typer.Option(
            "--hidden", help="Hidden widths (default 128,128,128,128; --resume: the run's)."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1...")
    ] = "auto",
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="torch threads (0: default).")
    ] = 0,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Fine-tune from this surrogate (run or file); on its own dataset, with its --seed.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in OUT (else refused).")
    ] = False,
) -> None:
    """Train an implied-vol surrogate through the shared Trainer (works under torchrun).

    \f
    Examples:
        The function behind ``qfnet train surrogate``, called directly (one epoch of a tiny net
        on 64 points: far from accurate):

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = generate(Path(tmp) / "ds", model="sabr", n=64, progress=False)
        ...     train_surrogate_command(data, Path(tmp) / "run", epochs=1, batch_size=32,
        ...                             hidden="8", device="cpu")
        ...     (Path(tmp) / "run" / "model.pt").is_file()
        test IV error: mean ... bp, p99 ... bp, max ... bp; model: .../run/model.pt
        True
    """
    from qfnet.surrogate_training import train_surrogate
    from qfnet.training import NonFiniteLossError
    from qfnet.training.checkpoint import CheckpointError

    try:
        widths = None if hidden is None else parse_widths(hidden)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--hidden") from None
    if device != "auto":  # as in generate: a usage error naming --device (it was exit 1)
        _checked_device(device)
    if resume and overwrite:  # one continues OUT, the other replaces it
        raise typer.BadParameter("--resume continues OUT, --overwrite replaces it: pass one",
                                 param_hint="--resume")  # fmt: skip
    _check_out_folder(out)
    if not (math.isfinite(lr) and lr > 0):  # inf ended as a NaN-loss error; 0 trained nothing
        raise typer.BadParameter(f"{lr}: the learning rate must be finite and > 0",
                                 param_hint="--lr")  # fmt: skip
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        summary = train_surrogate(
            data,
            out,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            resume=resume,
            init=init,
            hidden=widths,
            device=device,
            overwrite=overwrite,
        )
    except (OSError, ValueError, CheckpointError, NonFiniteLossError) as exc:
        raise fail(str(exc)) from exc
    if summary:
        t = summary["test"]
        typer.echo(
            f"test IV error: mean {t['mae_bp']:.3f} bp, p99 {t['p99_bp']:.2f} bp, "
            f"max {t['max_bp']:.2f} bp; model: {Path(out) / 'model.pt'}"
        )


_MARKET_COLUMNS = (
    "strike",
    "maturity",
    "spot",
    "forward",
    "discount",
    "rate",
    "dividend",
    "borrow",
)
"""Columns of a quote table that make a row's log-moneyness and maturity."""


def _column(df: pd.DataFrame, name: str, default: float | None = None) -> torch.Tensor:
    if name not in df.columns:
        if default is None:
            raise ValueError(f"surrogate pricing needs a {name!r} column")
        return torch.full((len(df),), default, dtype=torch.float64)
    values = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():  # with its file line, as the domain's refusals (it named the row alone)
        raise ValueError(
            f"column {name!r} is not a finite number at {_row(df, int(np.flatnonzero(bad)[0]))}"
        )
    return torch.tensor(values)


def _check_positive(df: pd.DataFrame, **columns: torch.Tensor) -> None:
    """Refuse a strike or forward <= 0 naming it and its row: it was reported as
    ``log_moneyness = nan`` outside the surrogate's domain."""
    for name, values in columns.items():
        bad = np.flatnonzero(~(values.numpy() > 0.0))
        if bad.size:
            row = int(bad[0])
            raise ValueError(f"{name} must be > 0, got {float(values[row])} at {_row(df, row)}")


def _is_call(df: pd.DataFrame) -> torch.Tensor:
    if "option_type" not in df.columns:
        raise ValueError("surrogate pricing needs an 'option_type' column (call/put)")
    return torch.tensor(short_call_flags(df["option_type"]))


def _row(df: pd.DataFrame, index: int) -> str:
    """``row i`` (1-based) of ``df``, with its file line where :func:`pricing.quotes.read_quotes`
    recorded them."""
    lines = df.attrs.get("file_lines")
    line = f" (file line {lines[index]})" if lines is not None and len(lines) == len(df) else ""
    return f"row {index + 1}{line}"


def _check_unshifted(df: pd.DataFrame) -> None:
    """Refuse a SABR ``shift`` other than 0 (empty is 0), naming its row: the SABR surrogates
    price unshifted SABR, and a shift of 0.02 was ignored (a call at K = 0.025, F = 0.03 priced
    0.00778, the unshifted model's price, for the shifted model's 0.00923)."""
    given = shifts(df)
    if given.dtype.kind not in "biuf":  # a raw table's text: '' and 'NA' are empty, as read_quotes'
        given = given.mask(given.astype(str).str.strip().str.lower().isin(MISSING_VALUES), 0.0)
    shift = pd.to_numeric(given, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~(shift == 0.0))
    if bad.size:
        row = int(bad[0])
        value = given.iloc[row]  # the text itself: 'abc' (and '', before) was "nan"
        if np.isfinite(shift[row]) or isinstance(value, np.generic):
            value = float(shift[row])
        raise ValueError(f"column 'shift' is {value!r} at {_row(df, row)}: the SABR "
                         "surrogate prices unshifted SABR (shift 0) only")  # fmt: skip


def surrogate_price_rows(
    df: pd.DataFrame,
    surrogate_path: str | os.PathLike[str] | SurrogateNet | None = None,
    *,
    model: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Price quote-table rows with a surrogate (a file or run, default the shipped Heston one; or
    one already loaded).

    Forward and discount per row by :func:`pricing.quotes.forward_and_discount` (``forward`` /
    ``discount`` where given, else from ``spot``, ``rate``, ``dividend`` and ``borrow``), as the
    other engines read them; model parameters come from the columns named by the surrogate's
    domain.
    SABR surrogates are forward-normalised (``F = 1``): each row's ``alpha`` is rescaled to
    ``alpha F^(beta - 1)``, the same dynamics for ``F_t / F``. ``model``, when given, must be the
    surrogate's model.

    Returns:
        ``(price, implied_vol)`` arrays, one entry per row.

    Raises:
        ValueError: a missing or non-numeric column, a strike or forward <= 0, a bad option
            type, a SABR ``shift`` other than 0 (naming the 1-based row).
        pricing.datasets.DomainError: a row outside the surrogate's domain (naming field and
            1-based row, and its file line where ``df`` is read from one).

    Examples:
        >>> rows = pd.DataFrame({"strike": [90.0, 110.0], "maturity": 1.0, "spot": 100.0,
        ...     "option_type": ["put", "call"], "v0": 0.04, "kappa": 1.5, "theta": 0.04,
        ...     "sigma": 0.3, "rho": -0.7})
        >>> price, iv = surrogate_price_rows(rows)
        >>> fourier = np.array([3.8102, 3.3247])  # pricing.quantlib.heston_price
        >>> price.shape, bool(np.abs(price - fourier).max() < 0.01)
        ((2,), True)
    """
    net = (surrogate_path if isinstance(surrogate_path, SurrogateNet)
           else load_surrogate(surrogate_path))  # fmt: skip
    if model is not None and net.domain.model != model:
        raise ValueError(f"the surrogate is a {net.domain.model} surrogate, not {model}")
    if net.domain.model == "sabr":
        _check_unshifted(df)
    t, k = _column(df, "maturity"), _column(df, "strike")
    # per row as the other engines read them (a spot with a 5% discount and no rate was carried
    # at 0%: 7.17 for the 10.36 at the money; a gap in a forward column was an error)
    forward, discount = (torch.as_tensor(x) for x in forward_and_discount(df))
    _check_positive(df, strike=k, forward=forward)
    given = {name: _column(df, name) for name in net.domain.param_names}
    params = _at_unit_forward(net, given, forward)  # SABR's alpha read at F = 1
    # the domain's edges as tolerant as the table's own precision, as implied_vol's and price's
    # are of their inputs': float32 strikes at the edge of the moneyness (37 of 80) were refused
    inputs = [df[name] for name in (*_MARKET_COLUMNS, *net.domain.param_names) if name in df]
    with torch.no_grad():
        try:
            iv = _implied_vol(net, t, torch.log(k / forward), "raise", params, inputs)
        except DomainError as error:  # its array index, as the table's 1-based row
            message = str(_given_alpha(error, net, given, forward))
            message = re.sub(r"at index (\d+)", lambda m: f"at {_row(df, int(m[1]))}", message,
                             count=1)  # fmt: skip
            raise DomainError(message) from None
        value = black_scholes.black_price(
            forward=forward,
            strike=k,
            maturity=t,
            volatility=iv,
            discount=discount,
            is_call=_is_call(df),
        )
    return value.numpy(), iv.numpy()
