"""Input checks of :mod:`pricing._validation`."""

from __future__ import annotations

import warnings

import pytest
import torch

from pricing._validation import check_finite, check_positive


def test_a_bad_value_that_requires_grad_is_named_without_a_warning():
    # float() of a requires_grad element warned "Converting a tensor with requires_grad=True to
    # a scalar" beside the error
    strike = torch.tensor([100.0, -1.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"strike must be finite and > 0; got -1.0 at index 1"):
            check_positive(strike=strike)


def test_plain_numbers_are_checked_in_float64():
    # float32 (torch's default) read a finite rate of 1e39 as inf and refused it, and named -0.2
    # as -0.20000000298023224
    check_finite(rate=1e39)
    with pytest.raises(ValueError, match=r"volatility must be finite and > 0; got -0\.2$"):
        check_positive(volatility=-0.2)
