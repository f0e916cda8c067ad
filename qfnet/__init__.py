"""qfnet: neural surrogates, calibration networks and deep hedging on one shared training loop."""

__version__ = "0.1.0"
