"""Where the shipped models live: ``$QFNET_DATA``, the checkout's ``data/`` or the wheel's copy.

The shipped surrogates, the calibration network and the bundled DAX surface are files of the
repository's ``data/`` folder: an editable install (``pip install -e .``) reads them there, and a
wheel carries a copy as ``qfnet/_shipped`` (``setup.py`` copies it at build time). The environment
variable ``QFNET_DATA`` points elsewhere (e.g. at retrained models).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_dir", "file_version", "missing_hint"]

DATA_ENV = "QFNET_DATA"


def data_dir() -> Path:
    """``$QFNET_DATA`` when set, else the wheel's ``qfnet/_shipped`` when installed from one,
    else the ``data/`` folder of the checkout next to the package.

    Examples:
        >>> data_dir().name  # in a checkout
        'data'
    """
    override = os.environ.get(DATA_ENV)
    if override:
        return Path(override)
    shipped = Path(__file__).resolve().parent / "_shipped"
    return shipped if shipped.is_dir() else Path(__file__).resolve().parents[1] / "data"


def missing_hint() -> str:
    """The sentence that ends a 'shipped model not found' error."""
    return (
        f"the shipped models come with the qfnet wheel (qfnet/_shipped) or the checkout's data/ "
        f"folder; reinstall qfnet, or set {DATA_ENV} to a copy of that folder"
    )


def file_version(path: Path) -> tuple[int, int, int] | None:
    """``(inode, modification time in ns, size)`` of a file, None where it cannot be read: the
    key of a per-file cache of loaded models (a retrained file, written atomically to a new
    inode, is another version).

    Examples:
        >>> file_version(Path("no such file")) is None
        True
    """
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size
