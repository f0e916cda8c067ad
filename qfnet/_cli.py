"""What every ``qfnet`` command does with bad input: ``error: ...`` on stderr, exit status 1
(misused options are click's usage errors, exit 2, instead)."""

from __future__ import annotations

import typer

__all__ = ["fail"]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr and return an Exit(1) to raise.

    Examples:
        >>> isinstance(fail("quotes.csv: no such file"), typer.Exit)
        True
    """
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)
