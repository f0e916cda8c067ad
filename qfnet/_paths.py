"""Where the shipped models live: the checkout's ``data/`` folder, or ``$QFNET_DATA``.

The shipped surrogates and the calibration network are files of the repository's ``data/``
folder (an editable install, ``pip install -e .``, finds them there). A non-editable install
finds them through the environment variable ``QFNET_DATA`` pointing at a copy of that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "data_dir", "missing_hint"]

DATA_ENV = "QFNET_DATA"


def data_dir() -> Path:
    """``$QFNET_DATA`` when set, else the ``data/`` folder next to the package.

    Examples:
        >>> data_dir().name
        'data'
    """
    override = os.environ.get(DATA_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[1] / "data"


def missing_hint() -> str:
    """The sentence that ends a 'shipped model not found' error."""
    return (
        f"the shipped models live in the qfnet checkout's data/ folder: install from a checkout "
        f"with `pip install -e .`, or set {DATA_ENV} to a copy of that folder"
    )
