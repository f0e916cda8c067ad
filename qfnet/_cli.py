"""What every ``qfnet`` command does with bad input: ``error: ...`` on stderr, exit status 1
(misused options are click's usage errors, exit 2, instead)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import typer

from pricing._atomic import replace_atomically
from pricing.quotes import DAYFIRST_HINT, DAYFIRST_OPTIONS

__all__ = [
    "DAYFIRST_FLAGS",
    "DAYFIRST_HELP",
    "SEED_MAX",
    "fail",
    "parse_widths",
    "quote_message",
    "seed_option",
    "write_atomically",
    "write_table",
]

# ``--dayfirst/--monthfirst`` of the commands that read a quote file (price, iv, calibrate): the
# ``dayfirst`` of pricing.quotes.read_quotes, None (neither flag) inferring it from the dates.
DAYFIRST_FLAGS = "--dayfirst/--monthfirst"
DAYFIRST_HELP = (
    "Numeric dates such as 05/01/2024 are day/month (--dayfirst) or month/day (--monthfirst). "
    "Default: the file's dates decide (a day above 12), and a file they cannot is refused."
)

SEED_MAX = 2**32 - 1
"""The largest ``--seed`` of every command: numpy's global seed (the trainers seed it) is 32
bits, and ``price --seed`` took up to 2**63 - 1 where the other commands refused 2**32."""


def seed_option(*args: Any, **kwargs: Any) -> Any:
    """``typer.Option(*args, **kwargs)`` of a ``--seed``, in ``[0, SEED_MAX]`` (one range for
    every command; outside it is a usage error naming ``--seed``).

    Examples:
        >>> seed_option(0, help="Random seed.").max == SEED_MAX
        True
    """
    return typer.Option(*args, min=0, max=SEED_MAX, **kwargs)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr and return an Exit(1) to raise.

    Examples:
        >>> isinstance(fail("quotes.csv: no such file"), typer.Exit)
        True
    """
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def quote_message(message: str) -> str:
    """A quote-reading error as a command-line user reads it: the ``read_quotes(...,
    dayfirst=...)`` arguments that settle numeric dates become the command's options.

    Examples:
        >>> quote_message("write them as YYYY-MM-DD (or pass read_quotes(..., dayfirst=True/False))")
        'write them as YYYY-MM-DD (or pass --dayfirst or --monthfirst)'
        >>> quote_message("as read_quotes(..., dayfirst=False) says: pass read_quotes(..., dayfirst=True)")
        'as --monthfirst says: pass --dayfirst'
    """
    message = message.replace(DAYFIRST_HINT, "--dayfirst or --monthfirst")
    for day_first, flag in ((True, "--dayfirst"), (False, "--monthfirst")):
        message = message.replace(DAYFIRST_OPTIONS[day_first], flag)
    return message


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write CSV or Parquet by the file extension (``.parquet``/``.pq``, else CSV), as
    :func:`write_atomically` writes: a failed write leaves no half-written table, and an
    unwritable ``path`` (a folder, a file in place of a folder) is an error line, not a
    traceback."""
    if path.suffix.lower() in (".parquet", ".pq"):
        write_atomically(path, lambda f: frame.to_parquet(f, index=False))
    else:
        write_atomically(path, lambda f: frame.to_csv(f, index=False))


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` to a temporary binary file beside ``path``, renamed over it
    (:func:`pricing._atomic.replace_atomically`): a failed or interrupted write leaves
    ``path`` as it was, and an unwritable ``path`` is an error line naming it, not a traceback.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_atomically(Path(tmp) / "fit.json", lambda f: f.write(b"{}"))
        ...     sorted(p.name for p in Path(tmp).iterdir())
        ['fit.json']
    """
    try:
        replace_atomically(path, write)
    except (OSError, ValueError, TypeError) as error:  # pyarrow's errors are Value/TypeErrors
        raise fail(f"{path}: cannot write the output ({error})") from error


def parse_widths(text: str) -> tuple[int, ...]:
    """Hidden-layer widths from ``--hidden`` text: comma-separated positive integers.

    Raises:
        ValueError: anything else (an empty text, a width of 0, a word), quoting the text.

    Examples:
        >>> parse_widths("128,64")
        (128, 64)
        >>> parse_widths("8,0")
        Traceback (most recent call last):
        ...
        ValueError: comma-separated positive integers, e.g. 128,128; got '8,0'
    """
    try:
        widths = tuple(int(width) for width in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise ValueError(f"comma-separated positive integers, e.g. 128,128; got {text!r}")
    return widths
