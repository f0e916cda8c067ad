"""Build hook: wheels carry the repository's ``data/`` folder as ``qfnet/_shipped``.

Everything else is configured in ``pyproject.toml``. The shipped models and the bundled DAX
surface live in the top-level ``data/`` folder of the checkout (an editable install reads them
there); a wheel has no checkout next to it, so the build copies the folder into the package, where
:func:`qfnet._paths.data_dir` finds it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = Path(__file__).resolve().parent / "data"


class BuildPyWithData(build_py):
    """``build_py`` that also copies ``data/`` to ``<build>/qfnet/_shipped``."""

    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            if not DATA.is_dir():
                raise FileNotFoundError(f"{DATA} is missing: a qfnet wheel ships that folder")
            target = Path(self.build_lib) / "qfnet" / "_shipped"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(DATA, target)


setup(cmdclass={"build_py": BuildPyWithData})
