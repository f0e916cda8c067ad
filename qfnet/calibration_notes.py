"""The calibration notes of the demo report: why the Heston methods' rows differ.

The ``network`` method answers with parameters of the box it was trained on, the ``surrogate``
method may polish its fit beyond its surrogate's domain; set against the ``direct`` optimum, the
notes say where either happened and list the warnings the methods raised.
"""

from __future__ import annotations

from typing import Any

__all__ = ["calibration_notes"]


def _network_box() -> dict[str, tuple[float, float]]:
    """The parameter box the shipped calibration network was trained on."""
    from qfnet.calibration_network import NAMES, load_network

    net = load_network()
    return dict(zip(NAMES, zip(net.lower.tolist(), net.upper.tolist(), strict=True), strict=True))


def _surrogate_box() -> dict[str, tuple[float, float]]:
    """The parameter domain of the shipped Heston surrogate."""
    from qfnet.surrogate import load_surrogate

    return {name: (low, high) for name, low, high in load_surrogate().domain.params}


def _outside(params: dict[str, float], box: dict[str, tuple[float, float]]) -> list[str]:
    """The names of the parameters outside ``box``.

    Examples:
        >>> _outside({"kappa": 15.56, "rho": -0.5}, {"kappa": (0.5, 5.0), "rho": (-0.95, 0.0)})
        ['kappa']
    """
    return [n for n, v in params.items() if n in box and not box[n][0] <= v <= box[n][1]]


def _values(params: dict[str, float], names: list[str]) -> str:
    return ", ".join(f"{n} {params[n]:.3g}" for n in names)


def calibration_notes(results: dict[str, Any], warned: list[str]) -> list[str]:
    """Why rows differ: the ``direct`` optimum against the boxes of the ``network`` (which cannot
    answer beyond its own) and ``surrogate`` methods, and the warnings the methods raised.

    Args:
        results: the calibration results by method name (``direct`` among them).
        warned: the methods' warnings, each prefixed with its method.

    Examples:
        >>> calibration_notes({"direct": None}, ["`network`: at the edge of its box"])
        ['Warnings of the methods:', '', '- `network`: at the edge of its box', '']
    """
    direct, lines = results["direct"], []
    if "network" in results:
        box, network = _network_box(), results["network"]
        outside = _outside(direct.params, box)
        ranges = ", ".join(f"{n} {lo:g} to {hi:g}" for n, (lo, hi) in box.items())
        where = "The `direct` optimum lies inside that box."
        if outside:
            where = (f"The `direct` optimum lies outside it ({_values(direct.params, outside)}): "
                     f"the network's answer stays inside ({_values(network.params, outside)}), "
                     f"hence its RMSE of {network.rmse_iv_bp:.1f} bp against "
                     f"{direct.rmse_iv_bp:.1f} bp.")  # fmt: skip
        lines += [
            "`network` answers in one forward pass (0 iterations, no optimisation: `converged` "
            "says its answer drew none of its warnings), with parameters of the box it was "
            f"trained on ({ranges}). " + where,
            "",
        ]
    surrogate = results.get("surrogate")
    outside = _outside(surrogate.params, _surrogate_box()) if surrogate is not None else []
    if outside:
        lines += [
            "`surrogate` fits within the surrogate's domain, then polishes the fit with the "
            "exact pricer (its default), which takes it beyond that domain "
            f"({_values(surrogate.params, outside)}).",
            "",
        ]
    if warned:
        lines += ["Warnings of the methods:", "", *(f"- {w}" for w in warned), ""]
    return lines
