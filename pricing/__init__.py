"""Numerical option pricing without neural networks.

Torch-vectorised, float64 by default, device-agnostic. Only :mod:`pricing.quantlib` imports QuantLib.
"""

__version__ = "0.1.0"
