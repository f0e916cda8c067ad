"""What every ``qfnet`` command does with bad input: ``error: ...`` on stderr, exit status 1
(misused options are click's usage errors, exit 2, instead)."""

from __future__ import annotations

import typer

from pricing.quotes import DAYFIRST_HINT, DAYFIRST_OPTIONS

__all__ = ["DAYFIRST_FLAGS", "DAYFIRST_HELP", "fail", "quote_message"]

# ``--dayfirst/--monthfirst`` of the commands that read a quote file (price, iv, calibrate): the
# ``dayfirst`` of pricing.quotes.read_quotes, None (neither flag) inferring it from the dates.
DAYFIRST_FLAGS = "--dayfirst/--monthfirst"
DAYFIRST_HELP = (
    "Numeric dates such as 05/01/2024 are day/month (--dayfirst) or month/day (--monthfirst). "
    "Default: the file's dates decide (a day above 12), and a file they cannot is refused."
)


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
