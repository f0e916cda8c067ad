"""Heston (1993) model: validated parameters, characteristic function and a batched Fourier pricer.

The price of the out-of-the-money option is one Fourier integral along a contour chosen per option
(Lord and Kahl 2007; Andersen and Lake 2018):

* away from the money the contour crosses the imaginary axis at the saddle point ``-i alpha`` of the
  damped integrand: this removes most of the oscillation of ``exp(-i u k)`` and makes the integrand
  at the origin of the size of the price itself, so deep out-of-the-money and 1-day prices keep their
  relative accuracy (the integral is never the small difference of two large numbers);
* near the money, where that saddle can hug a pole of the integrand, the contour is Lewis' line
  ``alpha = -1/2`` with the Andersen-Piterbarg Black-Scholes control variate (variance matched at the
  origin), whose price is added in closed form;
* a Gauss-Legendre panel covers the core ``[0, 10 s]``, ``s`` the saddle-point width, and a
  Gauss-Laguerre ray leaves its end at the asymptotic steepest-descent angle, on which the Heston
  integrand ``~ exp(-W z)`` decays without oscillating (long maturities, large vol of vol); where
  ``W`` is so small that the integrand decays like ``1 / z^2`` for decades past the core (at the
  money with a tiny variance and a large vol of vol), Gauss-Legendre panels geometric in ``|z|``
  take the ray instead.

The other option of the pair follows from put-call parity, added to (never subtracted from) the OTM
price. The contour is chosen without gradient tracking: the exact integral does not depend on it, so
autograd gives the derivative of the price to quadrature accuracy (calibration uses it).

Complex arithmetic runs on pairs of real tensors (:mod:`pricing._complex`), several times faster than
torch's complex kernels on CPU; ``compile=True`` fuses it further with ``torch.compile``.

References:
    S. Heston (1993), Rev. Financ. Stud. 6(2), 327-343.
    H. Albrecher, P. Mayer, W. Schoutens, J. Tistaert (2007), "The little Heston trap", Wilmott, pp. 83-92.
    R. Lord, C. Kahl (2007), "Optimal Fourier inversion in semi-analytical option pricing", J. Comput.
    Finance 10(4): the saddle-point damping ``alpha``.
    L. Andersen, V. Piterbarg (2007), "Moment explosions in stochastic volatility models", Finance Stoch.
    11: the explosion time of ``E[S^p]`` that bounds ``alpha``, and the control variate.
    L. Andersen, M. Lake (2018), "Robust high-precision option pricing by Fourier transforms: contour
    deformations and double-exponential quadrature", SSRN 3231626: the deformed contour.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields

import numpy as np
import torch

from pricing._complex import cexp
from pricing._heston_fourier import (
    Contour,
    choose_contour,
    in_two_passes,
    log_characteristic,
    otm_integral,
)
from pricing._typing import (
    DEFAULT_DTYPE,
    TensorLike,
    as_tensors,
    broadcast_named,
    call_flags,
    named_tensors,
    ordinary,
    real_tensor,
)
from pricing._validation import (
    carry_and_discount,
    check_finite,
    check_not_bool,
    check_positive,
    check_where,
    is_whole,
)
from pricing.black_scholes import black_implied_vol

__all__ = ["HestonParams", "characteristic_function", "delta", "otm_implied_vol", "price"]

PARAM_NAMES = ("v0", "kappa", "theta", "sigma", "rho")

_CHUNK = 8192
"""Options priced per pass: bounds the memory of the (chunk, nodes) temporaries."""
_GPU_CHUNK = 1 << 15
"""The same on a GPU, where each pass's hundreds of kernel launches cost more than its memory
(about 30 MB per temporary at the wide nodes): 1,000 calibrated surfaces of 66 quotes in 3
passes, not 9."""
DEFAULT_NODES = (32, 24)
"""Core (Gauss-Legendre) and tail (Gauss-Laguerre) nodes inside the validated parameter box."""
WIDE_NODES = (64, 48)
"""Nodes for options outside it (vol of vol above 1.5, variances below 0.005, ...): there the
default nodes were off by up to 150% (vol of vol 3, a far wing) or gave negative 1-day prices
(v0 = 0); these agree with 256/192 nodes (and a 36-digit Lewis integral) to 1e-8 or better on
those cases, but not everywhere outside the box: see :data:`REFINED_NODES`."""
REFINED_NODES = ((128, 96), (256, 192), (512, 360), (1024, 360), (2048, 360), (4096, 360))
"""Node counts tried in turn, outside the box, for options whose price still moves when the nodes
double: vol of vol 2-5 with kappa near 0 and long maturities, or strong correlation, were off by
up to 113 bp of vol at :data:`WIDE_NODES` (QuantLib's adaptive engine and a 30-digit Lewis integral
agree with 256/192 nodes there). The core panel of Lewis' line runs to thousands of saddle-point
widths where ``v0`` and ``kappa`` are near 0 and the vol of vol is large: 512 core nodes were then
100 times off or negative (-5.2e-5 for 5.3e-7); 2048 settle it, and 4096 show that they have.
Options that still move at the last count get a warning."""
SLOW_DECAY, SLOW_DECAY_ANY = 8.0, 0.05
"""Inside the box, options whose integrand's asymptotic envelope falls by less than
``exp(-SLOW_DECAY)`` across the core panel on Lewis' line, or by less than
``exp(-SLOW_DECAY_ANY)`` on any contour (:func:`_slow_decay`), get :data:`WIDE_NODES`: the
default 32 core nodes were off by up to 41 bp of vol there (a 7.6-year put 4.7 standard
deviations out, vol of vol 1.2; 0.26 bp for a 3-month ATM option of v0 0.007, vol of vol 1.46),
for about 1 in 500 sampled in-box options. About 5% of in-box options take the wider nodes; the
second kind (0.06%), which converge slowly even there, are refined as options outside the box
are (:data:`REFINED_NODES`)."""
_ROUNDING_FLOOR = 1e-15
"""OTM prices over ``D F`` in ``(-_ROUNDING_FLOOR, 0)`` are quadrature rounding: taken as 0; below
it, a quadrature error: the option is repriced at :data:`REFINED_NODES` until it settles."""
REFINE_RTOL, REFINE_ATOL = 1e-10, 1e-15
"""An OTM price (over ``D F``) is settled when doubling the nodes moves it by less than
``REFINE_RTOL * |price| + REFINE_ATOL``."""
MAX_TAIL_NODES = 360
"""Most Gauss-Laguerre nodes: scipy's ``roots_laguerre`` returns NaN nodes past about 380."""


def _outside_validated_box(v0, kappa, theta, sigma, rho) -> torch.Tensor:
    """Options whose parameters leave the box where the default nodes were validated."""
    return ((sigma > 1.5) | (v0 < 0.005) | (theta < 0.005) | (kappa < 0.2) | (kappa > 8.0)
            | (rho < -0.95) | (rho > 0.5)).detach()  # fmt: skip


@dataclass(frozen=True)
class HestonParams:
    """Heston parameters; fields may be floats or tensors (a batch, validated elementwise).

    ``dv = kappa (theta - v) dt + sigma sqrt(v) dW2``, ``d<W1, W2> = rho dt``, ``v(0) = v0``.

    Raises:
        ValueError: naming the field (and index) when a value is not finite, ``v0 < 0``,
            ``kappa, theta, sigma <= 0`` or ``|rho| >= 1``, is a bool or not a real number; naming
            the fields' shapes where they do not broadcast together.

    Examples:
        >>> HestonParams(v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-0.7).kappa
        1.5
        >>> HestonParams(v0=0.04, kappa=1.5, theta=0.04, sigma=0.5, rho=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: rho must be in (-1, 1); got -1.0
    """

    v0: TensorLike
    kappa: TensorLike
    theta: TensorLike
    sigma: TensorLike
    rho: TensorLike

    def __post_init__(self) -> None:
        _validate_params(*(getattr(self, f.name) for f in fields(self)))

    def as_tensors(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, ...]:
        """``(v0, kappa, theta, sigma, rho)`` as tensors of one dtype and device, broadcast together."""
        return as_tensors(*(getattr(self, n) for n in PARAM_NAMES), dtype=dtype, device=device)

    def __eq__(self, other: object) -> bool:
        """Equal where every field has the same shape and values (a float and a 0-d tensor of
        it alike): the generated ``==`` compared tensors elementwise and raised on a batch."""
        if not isinstance(other, HestonParams):
            return NotImplemented
        return all(_same_values(getattr(self, n), getattr(other, n)) for n in PARAM_NAMES)

    def __hash__(self) -> int:
        """Consistent with ``==``: the fields' shapes, and the values of one-element fields."""
        keys = (_hash_key(_real_values(n, getattr(self, n))) for n in PARAM_NAMES)
        return hash(tuple(keys))


def _validate_params(*values: TensorLike) -> None:
    named = {n: _real_values(n, v) for n, v in zip(PARAM_NAMES, values, strict=True)}
    # a (2,) v0 beside a (3,) kappa was accepted, and pricing then failed naming no field
    broadcast_named(named, "Heston parameter")
    check_finite(**named)
    check_where("v0", named["v0"], named["v0"] >= 0, ">= 0")
    for name in ("kappa", "theta", "sigma"):
        check_where(name, named[name], named[name] > 0, "> 0")
    check_where("rho", named["rho"], named["rho"].abs() < 1, "in (-1, 1)")


def _same_values(a: TensorLike, b: TensorLike) -> bool:
    """Same shape and values, as float64 on the CPU (fields may sit on different devices)."""
    if a is b:
        return True
    x, y = (_real_values("value", v).cpu().to(torch.float64) for v in (a, b))
    return x.shape == y.shape and torch.equal(x, y)


def _hash_key(value: torch.Tensor) -> tuple:
    """A field's shape, and its value where it holds one number (equal fields, equal keys)."""
    if value.numel() == 1:
        return (tuple(value.shape), float(value.to(torch.float64)))
    return (tuple(value.shape),)


def _real_values(name: str, value: TensorLike) -> torch.Tensor:
    """``value`` as a detached real tensor, refusing bools and non-numbers by ``name``.

    Python numbers and lists are taken in float64 (as_tensor's float32 rounded rho = 0.99999999
    to 1 and theta = 1e-50 to 0, refusing valid parameters); ``True`` was taken as 1 (kappa=True
    priced kappa = 1), a string or None failed in torch naming no field.
    """
    check_not_bool(**{name: value})
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise ValueError(f"{name} must be real, got a {value.dtype} tensor")
        return value.detach()
    try:
        return torch.as_tensor(value, dtype=DEFAULT_DTYPE)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a real number or array, got {value!r}") from None


def _frequency(u: object) -> torch.Tensor:
    """``u`` as a tensor of real or complex numbers (a tensor as given); text, None and bools
    are refused by name, as :func:`pricing._typing.real_tensor` refuses them."""
    if isinstance(u, torch.Tensor):
        check_not_bool(u=u)
        return u
    try:
        array = np.asarray(u)
    except (TypeError, ValueError, RuntimeError):  # e.g. a ragged list: refused below by name
        array = None
    if array is not None and array.dtype.kind == "c":
        return torch.as_tensor(array)
    return real_tensor("u", u)


def characteristic_function(
    u: TensorLike,
    *,
    maturity: TensorLike,
    v0: TensorLike,
    kappa: TensorLike,
    theta: TensorLike,
    sigma: TensorLike,
    rho: TensorLike,
) -> torch.Tensor:
    """Characteristic function ``E[exp(i u X)]`` of ``X = ln(S_T / F)`` under Heston, complex128.

    ``u`` may be real or complex (e.g. ``u - 0.5j`` for the Lewis formula). Everything broadcasts;
    the result is on ``u``'s device and differentiable in every input.

    Shape:
        u and the parameters: broadcastable; output: their broadcast shape, complex.

    References:
        Albrecher et al. (2007), "The little Heston trap", eq. (2)-(4).

    Examples:
        >>> phi = characteristic_function(
        ...     torch.tensor([0.0, -1j]), maturity=1.0, v0=0.04, kappa=1.5, theta=0.04, sigma=0.5,
        ...     rho=-0.7)
        >>> torch.allclose(phi, torch.ones(2, dtype=torch.complex128))  # E[1] = E[S_T / F] = 1
        True
    """
    _validate_params(v0, kappa, theta, sigma, rho)
    u = _frequency(u)
    # by name: text or None failed in torch ("new(): invalid data type 'str'"), naming nothing
    values = named_tensors(u=u.real, maturity=maturity, v0=v0, kappa=kappa, theta=theta,
                           sigma=sigma, rho=rho, dtype=torch.float64, device=u.device)  # fmt: skip
    imag = u.imag if u.is_complex() else torch.zeros((), device=u.device)
    values = (values[0], imag.to(device=u.device, dtype=torch.float64).expand(values[0].shape),
              *values[1:])  # fmt: skip
    check_finite(maturity=values[2])  # a NaN or negative maturity gave a value, not an error
    check_where("maturity", values[2], values[2] >= 0, ">= 0")
    phi = cexp(log_characteristic((values[0], values[1]), *values[2:]))
    return torch.complex(*phi)


def price(
    *,
    strike: TensorLike,
    maturity: TensorLike,
    spot: TensorLike | None = None,
    v0: TensorLike | None = None,
    kappa: TensorLike | None = None,
    theta: TensorLike | None = None,
    sigma: TensorLike | None = None,
    rho: TensorLike | None = None,
    rate: TensorLike | None = None,
    dividend: TensorLike | None = None,
    is_call: bool | TensorLike = True,
    params: HestonParams | None = None,
    forward: TensorLike | None = None,
    discount: TensorLike | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    core_nodes: int | None = None,
    tail_nodes: int | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """European option prices under Heston by Fourier inversion on a per-option saddle-point contour.

    Give the model either as ``params`` or as the five fields, and the market either as ``spot``
    (with ``rate`` and ``dividend``, continuously compounded, default 0) or as ``forward`` (with
    ``discount``, default 1). All inputs broadcast: ``params`` shaped (P, 1) against strikes (1, K)
    prices a P x K block in one call. Differentiable by autograd in every input.

    Args:
        strike: strikes, > 0.
        maturity: year fractions, > 0.
        spot: spot prices, > 0 (or give ``forward``).
        v0, kappa, theta, sigma, rho: Heston parameters (see :class:`HestonParams`).
        rate, dividend: continuously compounded rate and dividend yield.
        is_call: True for calls, False for puts (bool or boolean tensor).
        params: the parameters as one :class:`HestonParams` instead of the five fields.
        forward, discount: forward price and discount factor to maturity instead of spot, rate and
            dividend.
        dtype, device: of the result: ``torch.float64`` (the default, whatever the inputs'
            dtypes) or ``torch.float32``, the float64 prices rounded (the integral always runs in
            float64: float32 arithmetic gave NaN prices); the device of the first tensor input,
            else CPU.
        core_nodes, tail_nodes: Gauss-Legendre nodes on the core panel and Gauss-Laguerre nodes on
            the tail ray. By default :data:`DEFAULT_NODES` (32, 24), with which implied vols agree
            with QuantLib's adaptive reference (relative tolerance 1e-12), 256/192 nodes and
            40-digit Lewis integrals to about 1e-3 bp at worst (200,000 sampled options) for
            maturities from 1 day to 10 years, strikes up to 5 standard deviations and
            parameters in ``v0, theta`` in [0.005, 0.5], ``kappa`` in [0.2, 8], ``sigma`` in
            [0.05, 1.5], ``rho`` in [-0.95, 0.5] (the 5% whose integrand decays slowly take
            :data:`WIDE_NODES`, see :data:`SLOW_DECAY`); options outside that box get
            :data:`WIDE_NODES` (64, 48), then :data:`REFINED_NODES` in turn while doubling them
            still moves the price (:data:`REFINE_RTOL`), with a warning for those that still
            move at the last. Given explicitly (whole numbers;
            tail nodes at most :data:`MAX_TAIL_NODES`), they apply to every option.
        compile: fuse the integrand with ``torch.compile`` (needs a C++ compiler on CPU): several
            times faster per option, after a one-off compilation of 30-90 s per process; falls back to
            the eager kernels with a warning where compilation fails. For large or repeated batches.

    Returns:
        Prices, shape of the broadcast inputs.

    Raises:
        ValueError: naming the field and index of a non-finite or out-of-domain input, or the field
            given a bool for a number; a ``dtype`` other than float32 or float64; a ``compile``
            that is not a bool.

    Warns:
        RuntimeWarning: counting the options (and naming the first's flat index) whose price
            still moved at the last of :data:`REFINED_NODES`, and so may be inaccurate.

    Shape:
        All inputs broadcast together; output: the broadcast shape.

    References:
        Lord and Kahl (2007); Andersen and Lake (2018); see the module docstring.

    Examples:
        >>> p = price(spot=100.0, strike=[80.0, 100.0], maturity=1.0, rate=0.01, dividend=0.02,
        ...           v0=0.04, kappa=4.0, theta=0.25, sigma=1.0, rho=-0.5, is_call=False)
        >>> [round(float(x), 6) for x in p]  # Lewis' 50-digit values: 7.958878, 17.055271
        [7.958878, 17.055271]
    """
    model = _model_fields(params, (v0, kappa, theta, sigma, rho))
    _validate_params(*model)
    _check_options(dtype, compile)
    market = _market_inputs(spot, rate, dividend, forward, discount)
    flags = call_flags(is_call).to(DEFAULT_DTYPE)  # a string or 0.7 is an error, not a put
    # always float64 inside: float32's rounding broke the contour choice (NaN prices for 1 in 45
    # in-box options); ``dtype`` only rounds the result. The flags go last so that the device
    # is that of the first tensor the caller gave (the CPU flags took a GPU v0 to the CPU).
    market_names = ("spot", "rate") if forward is None else ("forward", "discount")
    named = dict(zip((*market_names, "dividend"), market, strict=True))
    named.update(zip(PARAM_NAMES, model, strict=True))
    values = named_tensors(strike=strike, maturity=maturity, **named, is_call=flags,
                           dtype=DEFAULT_DTYPE, device=device)  # fmt: skip
    strike_t, maturity_t, first, second, third = values[:5]
    check_positive(strike=strike_t, maturity=maturity_t)
    fwd, disc = _forward_and_discount(spot is None, first, second, third, maturity_t)
    shape = strike_t.shape
    flat = [v.reshape(-1) for v in (strike_t, maturity_t, fwd, disc, values[-1], *values[5:-1])]
    _check_nodes(core_nodes=core_nodes, tail_nodes=tail_nodes)
    out = _price_flat(*flat, core_nodes=core_nodes, tail_nodes=tail_nodes, compiled=compile)
    return out.reshape(shape).to(DEFAULT_DTYPE if dtype is None else dtype)


def _check_options(dtype: torch.dtype | None, compile: object) -> None:
    """``dtype`` None, float32 or float64 (int64 truncated the inputs to whole numbers and gave
    NaN prices; float16 failed inside torch); ``compile`` a bool (``"no"`` was truthy)."""
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64 (or None), got {dtype!r}")
    if not isinstance(compile, bool | np.bool_):
        raise ValueError(f"compile must be True or False, got {compile!r}")


def _check_nodes(**counts: int | None) -> None:
    """Node counts are None (the defaults) or whole numbers from 1 (tail: to MAX_TAIL_NODES)."""
    for name, n in counts.items():
        most = MAX_TAIL_NODES if name == "tail_nodes" else None
        if n is None:
            continue
        if not is_whole(n) or n < 1 or (most and n > most):
            span = f"1 to {most}" if most else "at least 1"
            raise ValueError(f"{name} must be a whole number {span} (or None), got {n!r}")


def _model_fields(params: HestonParams | None, values: tuple) -> tuple[TensorLike, ...]:
    given = [n for n, v in zip(PARAM_NAMES, values, strict=True) if v is not None]
    if params is not None:
        if given:
            raise ValueError(f"give either params or the fields, not both (also got {given})")
        return tuple(getattr(params, n) for n in PARAM_NAMES)
    missing = [n for n, v in zip(PARAM_NAMES, values, strict=True) if v is None]
    if missing:
        raise ValueError(
            f"missing Heston parameter(s) {missing} (or give params=HestonParams(...))"
        )
    return values


def _market_inputs(
    spot: TensorLike | None,
    rate: TensorLike | None,
    dividend: TensorLike | None,
    forward: TensorLike | None,
    discount: TensorLike | None,
) -> tuple[TensorLike, ...]:
    if forward is None:
        if spot is None:
            raise ValueError("give spot (with rate, dividend) or forward (with discount)")
        if discount is not None:
            raise ValueError("discount goes with forward; with spot give rate and dividend")
        return spot, 0.0 if rate is None else rate, 0.0 if dividend is None else dividend
    if spot is not None or rate is not None or dividend is not None:
        raise ValueError(
            "give either forward (with discount) or spot (with rate, dividend), not both"
        )
    return forward, 1.0 if discount is None else discount, 0.0


def _forward_and_discount(
    from_forward: bool,
    first: torch.Tensor,
    second: torch.Tensor,
    third: torch.Tensor,
    maturity: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and discount factor from (forward, discount) or (spot, rate, dividend)."""
    if from_forward:
        check_positive(forward=first, discount=second)
        return first, second
    check_positive(spot=first)
    check_finite(rate=second, dividend=third)
    return carry_and_discount(first, second, third, maturity)  # an overflow was a NaN price


def _price_flat(
    strike: torch.Tensor,
    maturity: torch.Tensor,
    forward: torch.Tensor,
    discount: torch.Tensor,
    is_call: torch.Tensor,
    *model: torch.Tensor,
    core_nodes: int,
    tail_nodes: int,
    compiled: bool,
) -> torch.Tensor:
    """Prices of flat (B,) inputs: the OTM option by quadrature, the ITM one by parity."""
    k = torch.log(strike / forward)
    params = (maturity, *model)
    default = core_nodes is None and tail_nodes is None
    if not default:
        rows = torch.arange(len(k), device=k.device)
        otm = _otm_rows(k, params, rows, core_nodes or DEFAULT_NODES[0],
                        tail_nodes or DEFAULT_NODES[1], compiled)[0]  # fmt: skip
    else:
        outside = _outside_validated_box(*model)
        otm = torch.empty_like(k)
        unsettled = outside.clone()  # refined while doubling the nodes moves the price
        for wide, nodes in ((False, DEFAULT_NODES), (True, WIDE_NODES)):
            rows = torch.nonzero(outside == wide).squeeze(-1)
            if len(rows):
                price, slow = _otm_rows(k, params, rows, *nodes, compiled, widen=not wide)
                otm = otm.index_put((rows,), price)
                unsettled[rows[slow]] = True
        # a negative OTM price beyond rounding is a quadrature error, not a price: 12 standard
        # deviations into the call wing the box's nodes gave -2.0e-9 for 1.4e-11 (F = 100)
        unsettled |= otm.detach() < -_ROUNDING_FLOOR
        otm = _refine(otm, k, params, torch.nonzero(unsettled).squeeze(-1), compiled)
    # far-wing prices below the quadrature's rounding came out as -5e-151: a price table with
    # them was refused by read_quotes ("price must be >= 0"); larger negatives stay visible
    otm = torch.where((otm < 0) & (otm > -_ROUNDING_FLOOR), torch.zeros_like(otm), otm)
    otm = discount * forward * otm
    call = is_call > 0.5
    otm_is_call = k >= 0
    intrinsic = discount * (forward - strike)
    itm = otm + torch.where(call, intrinsic, -intrinsic)
    return torch.where(call == otm_is_call, otm, itm)


def _otm_rows(
    k: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    rows: torch.Tensor,
    core: int,
    tail: int,
    compiled: bool,
    widen: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OTM prices over ``D F`` of the options ``rows`` (R,) of the flat inputs, in chunks, and a
    mask (R,) of those to refine; with ``widen``, the options of :func:`_slow_decay` get
    :data:`WIDE_NODES` and the slowest of them are to refine."""
    pieces, refine = [], []
    chunk = _CHUNK if k.device.type == "cpu" else _GPU_CHUNK
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        k_part, params_part = k[part], tuple(p[part] for p in params)
        contour = choose_contour(k_part.detach(), *params_part, compiled=compiled)
        slow = slowest = torch.zeros_like(k_part, dtype=torch.bool)
        if widen:
            slow, slowest = _slow_decay(contour, *params_part)
        pieces.append(_otm_split(k_part, params_part, contour, slow, (core, tail), compiled))
        refine.append(slowest)
    return torch.cat(pieces), torch.cat(refine)


def _otm_split(
    k: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    contour: Contour,
    slow: torch.Tensor,
    nodes: tuple[int, int],
    compiled: bool,
) -> torch.Tensor:
    """:func:`otm_integral` of one chunk (B,): the options ``slow`` at :data:`WIDE_NODES`, the
    others at ``nodes`` (in one call when none is slow)."""
    return in_two_passes(
        slow, k, params, contour,
        lambda k, p, c, wide: otm_integral(k, p, c, *(WIDE_NODES if wide else nodes), compiled),
    )  # fmt: skip


def _slow_decay(contour: Contour, t, v0, kappa, theta, sigma, rho) -> tuple[torch.Tensor, ...]:
    """Options whose integrand's asymptotic envelope ``exp(-c sqrt(1 - rho^2) u)``, ``c = (v0 +
    kappa theta T) / sigma``, falls by less than ``exp(-SLOW_DECAY)`` over the core panel on
    Lewis' line or ``exp(-SLOW_DECAY_ANY)`` on any contour, where the box's default core nodes are
    too few, and those of the second kind, which even :data:`WIDE_NODES` may leave ~1e-3 bp off
    (see :data:`SLOW_DECAY`); masks (B,)."""
    across = ((v0 + kappa * theta * t) / sigma * torch.sqrt(1.0 - rho * rho)).detach()
    across = across * contour.core_length
    slowest = across < SLOW_DECAY_ANY
    return ((contour.alpha == -0.5) & (across < SLOW_DECAY)) | slowest, slowest


def _refine(
    otm: torch.Tensor,
    k: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    rows: torch.Tensor,
    compiled: bool,
) -> torch.Tensor:
    """``otm`` (B,) with the options ``rows`` (priced at :data:`WIDE_NODES`) repriced at each of
    :data:`REFINED_NODES` in turn while the price still moves (see :data:`REFINE_RTOL`)."""
    for core, tail in REFINED_NODES:
        if not len(rows):
            break
        coarse, fine = otm[rows], _otm_rows(k, params, rows, core, tail, compiled)[0]
        otm = otm.index_put((rows,), fine)
        moved = (fine - coarse).detach().abs() > REFINE_RTOL * fine.detach().abs() + REFINE_ATOL
        rows = rows[moved | ~torch.isfinite(fine.detach())]
    if len(rows):  # their prices were returned as if converged, up to 100 times off or negative
        warnings.warn(
            f"{len(rows)} Heston price(s) still moved at {REFINED_NODES[-1]} nodes (flat index "
            f"{rows[0].item()} first): they may be inaccurate",
            RuntimeWarning,
            stacklevel=4,
        )
    return otm


def otm_implied_vol(
    *,
    ratio: TensorLike,
    maturity: TensorLike,
    v0: TensorLike,
    kappa: TensorLike,
    theta: TensorLike,
    sigma: TensorLike,
    rho: TensorLike,
) -> torch.Tensor:
    """Black implied vols of Heston's out-of-the-money prices (calls where ``ratio = K/F >= 1``, puts
    below), forward 1, undiscounted: the model vols that calibration reports. NaN where unsolvable,
    including where the OTM price underflows to 0 (e.g. 1 day, ``ratio`` 0.2, ``v0`` 1e-6): Heston's
    OTM prices are positive, so its vol there is too, but not determined by a price of 0, which
    :func:`pricing.black_scholes.black_implied_vol` (a price at intrinsic value) reads as vol 0.

    Shape:
        All inputs broadcast together; output: the broadcast shape.

    Examples:
        >>> ratio = torch.tensor([0.9, 1.1], dtype=torch.float64)
        >>> vols = otm_implied_vol(ratio=ratio, maturity=1.0, v0=0.04, kappa=1.5, theta=0.04,
        ...                        sigma=0.5, rho=-0.7)
        >>> bool(vols[0] > vols[1])  # negative rho: a downward skew
        True
    """
    # a list failed in ``ratio >= 1.0``, text in torch naming nothing; a tensor is used as given
    ratio = real_tensor(
        "ratio", ratio, dtype=None if isinstance(ratio, torch.Tensor) else DEFAULT_DTYPE
    )
    # named here: the pricer below would name it "strike"
    check_where("ratio", ratio.detach(), torch.isfinite(ratio) & (ratio > 0), "finite and > 0")
    is_call = ratio >= 1.0
    otm = price(forward=1.0, strike=ratio, maturity=maturity, is_call=is_call, v0=v0, kappa=kappa,
                theta=theta, sigma=sigma, rho=rho)  # fmt: skip
    vol = black_implied_vol(price=otm, forward=1.0, strike=ratio, maturity=maturity,
                            is_call=is_call)  # fmt: skip
    return torch.where(otm == 0, torch.nan, vol)  # a vol of 0 was reported there


# ordinary tensors inside an inference_mode block too, whose tensors autograd refuses (and which
# enable_grad does not lift): "element 0 of tensors does not require grad"
@torch.inference_mode(False)
def delta(
    *,
    spot: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    v0: TensorLike | None = None,
    kappa: TensorLike | None = None,
    theta: TensorLike | None = None,
    sigma: TensorLike | None = None,
    rho: TensorLike | None = None,
    rate: TensorLike | None = None,
    dividend: TensorLike | None = None,
    is_call: bool | TensorLike = True,
    params: HestonParams | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Heston delta ``dV/dS`` (variance held fixed) by autograd through :func:`price`.

    Arguments as for :func:`price` (spot form only). The result carries no graph.

    Shape:
        All inputs broadcast together; output: the broadcast shape.

    Examples:
        >>> d = delta(spot=100.0, strike=100.0, maturity=1.0, v0=0.04, kappa=1.5, theta=0.04,
        ...           sigma=0.5, rho=-0.7)
        >>> 0.5 < float(d) < 0.7
        True
    """
    _check_options(dtype, False)
    named = dict(strike=strike, maturity=maturity, spot=spot, v0=v0, kappa=kappa, theta=theta,
                 sigma=sigma, rho=rho, rate=rate, dividend=dividend)  # fmt: skip
    if params is not None:
        named.update({n: getattr(params, n) for n in PARAM_NAMES})
    # each input refused by name where it is not real numbers, and a ValueError naming the
    # shapes, as price gives (torch's RuntimeError named no input)
    given = {n: real_tensor(n, v) for n, v in named.items() if v is not None}
    shape = broadcast_named({**given, "is_call": call_flags(is_call)}, "input")
    (spot_t,) = named_tensors(spot=spot, dtype=DEFAULT_DTYPE if dtype is None else dtype,
                              device=device)  # fmt: skip
    spot_t = spot_t.detach().expand(shape).clone().requires_grad_(True)
    # a tensor made inside an inference_mode block is one autograd refuses to save ("Inference
    # tensors cannot be saved for backward"): an ordinary copy of each goes into the graph
    fields = dict(strike=strike, maturity=maturity, v0=v0, kappa=kappa, theta=theta, sigma=sigma,
                  rho=rho, rate=rate, dividend=dividend)  # fmt: skip
    plain = {n: ordinary(v) for n, v in fields.items()}
    if params is not None:
        params = HestonParams(**{n: ordinary(getattr(params, n)) for n in PARAM_NAMES})
    with torch.enable_grad():
        value = price(
            spot=spot_t,
            **plain,
            is_call=ordinary(is_call),
            params=params,
            dtype=spot_t.dtype,
            device=spot_t.device,
        )
        (grad,) = torch.autograd.grad(value.sum(), spot_t)
    return grad
