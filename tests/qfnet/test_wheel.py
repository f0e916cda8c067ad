"""A wheel installed away from the checkout finds the shipped models and the DAX surface."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = """
from qfnet import demo
from qfnet._paths import data_dir
from qfnet.calibration_network import default_path
from qfnet.surrogate import load_surrogate
print(data_dir())
print(load_surrogate().domain.model, default_path().is_file(), len(demo.otm_surface()) > 0)
"""


@pytest.mark.slow
def test_a_wheel_carries_data_as_qfnet_shipped(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(REPO), "--no-deps", "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("qfnet-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("QFNET_DATA", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)  # the wheel's qfnet first, the checkout is not on the path
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, cwd=tmp_path, text=True,
                         capture_output=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    where, loaded = out.stdout.strip().splitlines()
    assert Path(where) == site / "qfnet" / "_shipped"
    assert loaded == "heston True True"
