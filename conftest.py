"""Collection settings for the doctests of the packages (``pytest qfnet pricing tests``)."""

from __future__ import annotations

import importlib.util

# The Triton kernels import Triton, which CPU-only installs lack (the simulators never import
# this module there); their tests run where Triton is (tests/pricing/test_philox.py).
collect_ignore = [] if importlib.util.find_spec("triton") else ["pricing/_triton_kernels.py"]
