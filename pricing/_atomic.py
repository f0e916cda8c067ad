"""Atomic file writes: a temporary file beside the target, flushed to disk, renamed over it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["replace_atomically", "save_figure_atomically"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
"""The process's umask (read once at import: reading it means setting it)."""


def replace_atomically(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(f)`` to a temporary binary file beside ``path``, flushed to disk, renamed over
    ``path``; the temporary is removed on any failure, and parent folders are created. The
    temporary's name is unique (``mkstemp``), so two writers of one ``path`` never write into
    one file.

    Examples:
        >>> p = Path(tempfile.mkdtemp()) / "table.csv"
        >>> replace_atomically(p, lambda f: f.write(b"a,b\\n")).read_bytes()
        b'a,b\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide the file from collaborators
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_figure_atomically(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` through :func:`replace_atomically`, in the format its suffix
    names: a plot written in place (``loss.png`` at the end of every fit) was left cut short by
    an interrupted write, and a reader could see half of one.

    Examples:
        >>> from matplotlib.figure import Figure
        >>> p = Path(tempfile.mkdtemp()) / "plot.png"
        >>> save_figure_atomically(Figure(), p).read_bytes()[1:4]
        b'PNG'
    """
    path = Path(path)
    form = path.suffix.removeprefix(".") or None  # a file object carries no name to read it from
    return replace_atomically(path, lambda f: fig.savefig(f, format=form, **kwargs))
