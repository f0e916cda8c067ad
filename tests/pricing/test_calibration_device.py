"""Heston ``direct`` calibration on a device: the batched fit runs where it is asked to and agrees
with the CPU fit; a device the machine lacks, or that a method cannot use, is refused up front."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import pricing.calibration as calibration
import pricing.calibration_heston as heston
from pricing.black_scholes import black_implied_vol
from pricing.calibration import calibrate, calibrate_many
from pricing.heston import price as heston_price
from pricing.sabr import lognormal_vol

TRUTHS = (
    {"v0": 0.045, "kappa": 2.1, "theta": 0.06, "sigma": 0.65, "rho": -0.6},
    {"v0": 0.02, "kappa": 1.2, "theta": 0.09, "sigma": 0.4, "rho": -0.3},
    {"v0": 0.1, "kappa": 3.5, "theta": 0.04, "sigma": 0.9, "rho": -0.8},
)
RECOVERY_RTOL = 1e-5
"""Parameters recovered from a clean surface (the CPU fit's own accuracy, see
test_calibration_heston)."""
DEVICE_MATCH_RTOL = 1e-7
"""A device's fit against the CPU fit: the same optimum, reached through float64 kernels that
round differently (both converge to ftol 1e-8 on the cost)."""
DEVICE_MATCH_RMSE_BP = 1e-4


def _surface(truth: dict[str, float]) -> pd.DataFrame:
    """A clean 4 x 7 surface (forward 100, no rates) priced by the reference pricer."""
    t = np.repeat([0.1, 0.5, 1.0, 2.0], 7)
    ratio = torch.tensor(np.tile(np.linspace(0.8, 1.2, 7), 4))
    maturity = torch.tensor(t)
    otm = heston_price(forward=1.0, strike=ratio, maturity=maturity, is_call=ratio >= 1, **truth)
    iv = black_implied_vol(price=otm, forward=1.0, strike=ratio, maturity=maturity,
                           is_call=ratio >= 1).numpy()  # fmt: skip
    return pd.DataFrame({"strike": 100.0 * ratio.numpy(), "maturity": t, "forward": 100.0,
                         "discount": 1.0, "implied_vol": iv})  # fmt: skip


def _params(fit) -> list[float]:
    return [fit.params[name] for name in heston.NAMES]


@pytest.fixture(scope="module")
def tables() -> list[pd.DataFrame]:
    return [_surface(truth) for truth in TRUTHS]


@pytest.fixture(scope="module")
def cpu_fits(tables):
    return calibrate_many("heston", tables, seed=1)


def test_batched_fit_on_the_device_recovers_the_parameters_as_on_the_cpu(
    device, tables, cpu_fits
) -> None:
    fits = calibrate_many("heston", tables, seed=1, device=device)
    for truth, fit, on_cpu in zip(TRUTHS, fits, cpu_fits, strict=True):
        assert all(type(value) is float for value in fit.params.values())
        assert isinstance(fit.residuals["model_iv"].to_numpy(), np.ndarray)
        np.testing.assert_allclose(_params(fit), list(truth.values()), rtol=RECOVERY_RTOL)
        np.testing.assert_allclose(_params(fit), _params(on_cpu), rtol=DEVICE_MATCH_RTOL)
        assert fit.rmse_iv_bp == pytest.approx(on_cpu.rmse_iv_bp, abs=DEVICE_MATCH_RMSE_BP)
        assert fit.converged


def test_single_fit_on_the_device_matches_the_cpu(device, tables, cpu_fits) -> None:
    fit = calibrate("heston", tables[0], seed=1, device=str(device))
    reference = calibrate("heston", tables[0], seed=1)
    np.testing.assert_allclose(_params(fit), _params(reference), rtol=DEVICE_MATCH_RTOL)
    np.testing.assert_allclose(_params(fit), list(TRUTHS[0].values()), rtol=RECOVERY_RTOL)


def test_packed_surfaces_fit_where_they_live_and_return_cpu_tensors(device, tables) -> None:
    prepared = [t.rename(columns={"implied_vol": "market_iv"}) for t in tables]
    packed = heston.surfaces_from_quotes(prepared, [np.ones(len(t)) for t in prepared],
                                         device=device)  # fmt: skip
    assert packed.market_iv.device.type == device.type
    assert packed.grid.k.device.type == device.type
    x0 = torch.tensor([[0.05, 1.0, 0.05, 0.5, -0.5]], dtype=torch.float64)  # on the CPU
    params, vols, converged, iterations = heston.calibrate_surfaces(packed, x0=x0, n_scan=32)
    for value in (params, *vols, converged, iterations):
        assert value.device.type == "cpu"
    expected = torch.tensor([list(t.values()) for t in TRUTHS], dtype=torch.float64)
    torch.testing.assert_close(params, expected, rtol=RECOVERY_RTOL, atol=0.0)
    assert [len(v) for v in vols] == [len(t) for t in tables]


def test_polishing_many_surfaces_in_one_batch_equals_polishing_each(device, tables) -> None:
    prepared = [t.rename(columns={"implied_vol": "market_iv"}) for t in tables]
    packed = heston.surfaces_from_quotes(prepared, [np.ones(len(t)) for t in prepared],
                                         device=device)  # fmt: skip
    lower, upper = heston._box(None, device)
    start = torch.tensor([list(t.values()) for t in TRUTHS], dtype=torch.float64, device=device)
    start = start * torch.tensor([1.1, 0.9, 1.05, 1.1, 0.95], dtype=torch.float64, device=device)
    together = heston._polish(packed, start, lower, upper, 3).x
    for s in range(len(tables)):
        rows = torch.tensor([s], device=device)
        alone = heston._polish(heston._select(packed, rows), start[rows], lower, upper, 3).x
        torch.testing.assert_close(together[s], alone[0], rtol=1e-12, atol=0.0)


def test_an_explicit_cpu_device_changes_nothing(tables) -> None:
    plain = calibrate_many("heston", tables[:2], seed=4)
    for device in ("cpu", torch.device("cpu")):
        explicit = calibrate_many("heston", tables[:2], seed=4, device=device)
        for a, b in zip(plain, explicit, strict=True):
            assert a.params == b.params and a.iterations == b.iterations
            pd.testing.assert_frame_equal(a.residuals, b.residuals, check_exact=True)
    single = calibrate("heston", tables[2], seed=4, device="cpu")
    assert single.params == calibrate("heston", tables[2], seed=4).params
    # None is the default, as in the simulators (it was refused as "not a torch device")
    assert calibrate("heston", tables[2], seed=4, device=None).params == single.params


def test_an_unavailable_method_is_not_listed_as_running_on_devices(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(calibration, "_ON_DEVICES", set(calibration._ON_DEVICES))
    calibration.register_method("sabr", "gpu_toy", lambda p: None, devices=True)
    del calibration._REGISTRY[("sabr", "gpu_toy")]  # gone, as a doctest's toy method is
    calibration.register_method("sabr", "gpu_toy", None, "its package is missing")
    try:
        with pytest.raises(ValueError, match=r"other devices: heston 'direct'\)$"):
            calibrate("sabr", _smile(), method="direct", device="cuda")
    finally:
        calibration._UNAVAILABLE.pop(("sabr", "gpu_toy"), None)


def _smile() -> pd.DataFrame:
    strike = 100.0 * np.exp(np.linspace(-0.3, 0.3, 7))
    vol = lognormal_vol(forward=100.0, strike=torch.tensor(strike), maturity=1.0, alpha=0.3,
                        beta=1.0, rho=-0.3, nu=0.6).numpy()  # fmt: skip
    return pd.DataFrame({"strike": strike, "maturity": 1.0, "forward": 100.0, "discount": 1.0,
                         "implied_vol": vol})  # fmt: skip


def test_a_missing_cuda_device_is_refused_naming_the_option(monkeypatch, tables) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' was asked for but CUDA is not available"):
        calibrate_many("heston", tables, device="cuda")
    with pytest.raises(ValueError, match="device 'cuda:0' was asked for but CUDA"):
        calibrate("heston", tables[0], device="cuda:0")


def test_a_cuda_index_beyond_the_machine_is_refused(monkeypatch, tables) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device 'cuda:3': this machine has 1 CUDA device"):
        calibrate_many("heston", tables, device="cuda:3")


def test_methods_on_the_cpu_only_refuse_another_device_and_take_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the refusal is the method's
    for model, method in (("sabr", "direct"), ("sabr", "quantlib"), ("heston", "quantlib")):
        with pytest.raises(ValueError, match=rf"device='cuda': method '{method}' for {model} "
                                             r"runs on the CPU only.*heston 'direct'"):  # fmt: skip
            calibrate(model, _smile(), method=method, device="cuda")
    with pytest.raises(ValueError, match=r"method 'direct' for sabr runs on the CPU only"):
        calibrate_many("sabr", [_smile(), _smile()], device=torch.device("cuda"))
    fit = calibrate("sabr", _smile(), device="cpu")
    assert fit.params == calibrate("sabr", _smile()).params
