"""SABR model: Hagan et al. (2002) implied volatilities, shifted SABR, alpha from the ATM vol.

The SABR forward follows ``dF = a F^beta dW1``, ``da = nu a dW2``, ``d<W1, W2> = rho dt``
with ``a(0) = alpha``. Shifted SABR applies the same dynamics to ``F + shift`` and every formula
below to ``(K + shift, F + shift)``. All functions are batched by broadcasting, float64 by
default, run on any device and are differentiable with autograd (the ATM limit included).

Numerics: Hagan's factor ``z / x(z)`` is 0/0 at the money. We write ``x(z) = log1p(w)`` with
``w = z u(z)`` and ``u(0) = 1`` computed without cancellation on either side of ``z = rho``, so
that ``z / x(z) = 1 / (u h(w))`` with ``h(w) = log1p(w) / w`` summed as a series for small
``|w|``; in the far left wing, where ``exp(x)`` is tiny, ``x`` is the log of a cancellation-free
form. This is smooth at ``K = F`` (values and gradients) and matches a 40-digit evaluation of the
same formula to a few ulps (QuantLib's direct ``z / x`` loses up to ~1e-9 relative for |z| near
1e-7). Like any implementation of the expansion, it is ill-conditioned where the maturity
correction ``1 + T(...)`` nearly cancels, and it returns the formula's value, negative included,
where the expansion breaks down (long maturities with strongly negative ``rho * nu``). Well before
that, Hagan's prices stop being arbitrage-free at low strikes and long maturities: concave in the
strike, a negative density (see :func:`price`); nothing here checks or corrects it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pricing._typing import (
    TensorLike,
    broadcast_named,
    broadcast_shapes,
    common_dtype_device,
    named_tensors,
    real_tensor,
)
from pricing._validation import check_real, check_where
from pricing.black_scholes import black_price

__all__ = ["SabrParams", "alpha_from_atm_vol", "lognormal_vol", "normal_vol", "price"]

# Elements per chunk for large CPU batches (see _chunked).
_CPU_CHUNK = 1 << 16


@dataclass(frozen=True)
class SabrParams:
    """SABR parameters (Hagan et al. 2002), validated on construction.

    Attributes:
        alpha: initial volatility level, > 0.
        beta: CEV exponent, in [0, 1].
        rho: correlation of forward and volatility, in (-1, 1).
        nu: volatility of volatility, >= 0.
        shift: displacement applied to forward and strike (shifted SABR), default 0.

    Examples:
        >>> from dataclasses import asdict
        >>> p = SabrParams(alpha=0.3, beta=0.6, rho=0.01, nu=0.02)
        >>> v = lognormal_vol(forward=0.039, strike=0.04, maturity=1.0, **asdict(p))
        >>> round(float(v), 10)
        1.1014560936
        >>> SabrParams(alpha=0.3, beta=0.6, rho=1.0, nu=0.02)
        Traceback (most recent call last):
        ...
        ValueError: rho must be in (-1, 1), got 1.0
    """

    alpha: float
    beta: float
    rho: float
    nu: float
    shift: float = 0.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "rho", "nu", "shift"):
            value = getattr(self, name)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            # numpy scalars (np.float32, np.int64) were refused as "not a finite number", and
            # True taken as alpha = 1: real numbers only, stored as floats
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{name} must be a finite real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        checks = (
            ("alpha", self.alpha > 0, "> 0"),
            ("beta", 0 <= self.beta <= 1, "in [0, 1]"),
            ("rho", -1 < self.rho < 1, "in (-1, 1)"),
            ("nu", self.nu >= 0, ">= 0"),
        )
        for name, ok, requirement in checks:
            if not ok:
                raise ValueError(f"{name} must be {requirement}, got {getattr(self, name)!r}")


def _check_range(
    name: str,
    values: torch.Tensor,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    closed: str = "",
) -> None:
    """Raise ``ValueError`` (field, first bad value, index) unless all finite and in range.

    The range is ``(low, high)``; ``closed`` holds ``"l"`` and/or ``"h"`` for inclusive ends.
    The fast path is one min/max reduction (NaN propagates through both) and one device sync.
    """
    if values.numel() == 0:
        return
    lo, hi = torch.stack([values.min(), values.max()]).tolist()
    lo_ok = lo >= low if "l" in closed else lo > low
    hi_ok = hi <= high if "h" in closed else hi < high
    if lo_ok and hi_ok and math.isfinite(lo) and math.isfinite(hi):
        return
    above = values >= low if "l" in closed else values > low
    below = values <= high if "h" in closed else values < high
    if high == math.inf:
        requirement = f"{'>=' if 'l' in closed else '>'} {low:g}"
    else:
        brackets = ("[" if "l" in closed else "(", "]" if "h" in closed else ")")
        requirement = f"in {brackets[0]}{low:g}, {high:g}{brackets[1]}"
    ok = above & below & torch.isfinite(values)
    check_where(name, values, ok, f"finite and {requirement}")


def _float_tensors(
    named: dict[str, TensorLike], dtype: torch.dtype | None, device: torch.device | str | None
) -> list[torch.Tensor]:
    """Convert to tensors of one dtype and device *without* broadcasting them, refusing a bool,
    complex, string or None by name (:func:`pricing._typing.real_tensor`).

    Scalar parameters stay 0-d, so parameter-only terms cost nothing per option; the shapes must
    still broadcast together (a ValueError names each input's shape where they do not).
    """
    dtype, device = common_dtype_device(list(named.values()), dtype, device)
    tensors = {n: real_tensor(n, v, dtype=dtype, device=device) for n, v in named.items()}
    broadcast_named(tensors, "input")
    return list(tensors.values())


def _inputs(
    forward: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    alpha: TensorLike,
    beta: TensorLike,
    rho: TensorLike,
    nu: TensorLike,
    shift: TensorLike,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> list[torch.Tensor]:
    """Validate; return shifted forward and strike, maturity and the parameters (unbroadcast)."""
    # as_tensor took True for 1 (beta=True priced beta = 1) and cast a complex tensor to real
    # with only a warning: _float_tensors refuses both by name
    named = dict(forward=forward, strike=strike, maturity=maturity, alpha=alpha, beta=beta,
                 rho=rho, nu=nu, shift=shift)  # fmt: skip
    f, k, t, a, b, r, n, s = _float_tensors(named, dtype, device)
    _check_range("shift", s)
    f, k = _shifted(f, s, shift), _shifted(k, s, shift)
    _check_range("forward + shift", f, 0.0)
    _check_range("strike + shift", k, 0.0)
    _check_range("maturity", t, 0.0)
    _check_range("alpha", a, 0.0)
    _check_range("beta", b, 0.0, 1.0, closed="lh")
    _check_range("rho", r, -1.0, 1.0)
    _check_range("nu", n, 0.0, closed="l")
    return [f, k, t, a, b, r, n]


def _shifted(x: torch.Tensor, shift: torch.Tensor, raw_shift: TensorLike) -> torch.Tensor:
    """``x + shift``, skipping the full-size add for a plain-number zero shift (the common case)."""
    if isinstance(raw_shift, (int, float)) and raw_shift == 0:
        return x
    return x + shift


def _log1p_ratio(w: torch.Tensor) -> torch.Tensor:
    """``log1p(w) / w`` for ``w > -1``, 1 at ``w = 0``, with finite gradients everywhere.

    Below ``|w| = u^(1/4)`` (``u`` the unit roundoff: 1.03e-4 in float64, 0.016 in float32) the
    series to ``w^3`` is used: its truncation error ``|w|^4 / 5`` is under ``u / 5``. Above it the
    closed form's gradient, a difference of two terms of size ``1 / |w|``, loses about ``u / |w|``
    (1e-12 in float64); a fixed threshold of 1e-4 lost ~1e-3 in float32, 1% in ``d vol / dF``.
    """
    small = w.abs() < (torch.finfo(w.dtype).eps / 2) ** 0.25
    w_small = torch.where(small, w, 0.0)
    w_large = torch.where(small, 1.0, w)  # keeps the unused branch free of 0/0
    series = ((w_small * (-1 / 4) + 1 / 3) * w_small - 1 / 2) * w_small + 1
    return torch.where(small, series, torch.log1p(w_large) / w_large)


def _z_over_x(z: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Hagan's ``z / x(z)``, ``x(z) = log((sqrt(1 - 2 rho z + z^2) + z - rho) / (1 - rho))``.

    ``exp(x) - 1 = z u`` with ``u`` written as a ratio of positive sums on each side of
    ``z = rho`` (both forms are positive everywhere, so the unused one is harmless); where
    ``exp(x)`` is small (far left wing) ``x`` is the log of its cancellation-free form.

    References:
        Hagan, Kumar, Lesniewski, Woodward (2002), "Managing smile risk", eq. (2.17b).
    """
    s = torch.sqrt((z - 2 * rho) * z + 1)
    upper = z >= rho
    s_minus_z = s - z
    lower_denominator = s_minus_z + rho
    numerator = torch.where(upper, (s + z) + (1 - 2 * rho), s_minus_z + (1 + 2 * rho))
    denominator = (s + 1) * torch.where(upper, 1 - rho, lower_denominator)
    u = numerator / denominator
    w = z * u
    # Far left wing: exp(x) is small, and 1 + w would lose digits. exp(x) is (s + z - rho) /
    # (1 - rho), a sum of positive terms, where z >= rho (reached as rho -> -1), and (1 + rho) /
    # (s - z + rho) below, where that sum is the positive one.
    far = w < -0.5
    # Each branch's unused side gets a harmless stand-in, else its 0 * inf gradient is NaN: s - z
    # + rho rounds to 0 for z >~ 1e8 (upper), and w to -1 for z <~ -1e16 (far).
    lower_safe = torch.where(upper, 1.0, lower_denominator)
    exp_x = torch.where(upper, (s + z - rho) / (1 - rho), (1 + rho) / lower_safe)
    x_over_z_far = torch.log(exp_x) / torch.where(far, z, -1.0)
    near = u * _log1p_ratio(torch.where(far, 0.0, w))
    return 1 / torch.where(far, x_over_z_far, near)


def _common_terms(
    f: torch.Tensor,
    k: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor,
    n: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """log(F/K), FK, (FK)^((1-beta)/2), the log series ``1 + c/24 + c^2/1920`` and z/x(z).

    ``c = (1 - beta)^2 log(F/K)^2`` and ``z = nu / alpha (FK)^((1-beta)/2) log(F/K)`` as in
    Hagan et al. (2002), eqs. (2.17a)-(2.17b); shifted inputs are expected.
    """
    log_fk = torch.log(f / k)
    fk = f * k
    fk_pow = fk ** ((1 - b) / 2)
    c = (1 - b) ** 2 * log_fk * log_fk
    series = (c * (1 / 1920) + 1 / 24) * c + 1
    z = (n / a) * fk_pow * log_fk
    return log_fk, fk, fk_pow, series, _z_over_x(z, r)


def _lognormal_core(
    f: torch.Tensor,
    k: torch.Tensor,
    t: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor,
    n: torch.Tensor,
) -> torch.Tensor:
    """Hagan et al. (2002) eq. (2.17a) on validated, shifted inputs."""
    _, _, fk_pow, series, z_over_x = _common_terms(f, k, a, b, r, n)
    inv_pow = 1 / fk_pow
    correction = (
        ((1 - b) ** 2 * a * a / 24 * inv_pow + r * b * n * a / 4) * inv_pow
        + (2 - 3 * r * r) * n * n / 24
    ) * t + 1
    return a * inv_pow / series * z_over_x * correction


def _normal_core(
    f: torch.Tensor,
    k: torch.Tensor,
    t: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    r: torch.Tensor,
    n: torch.Tensor,
) -> torch.Tensor:
    """Hagan et al. (2002) eq. (B.69b) on validated, shifted inputs."""
    log_fk, fk, fk_pow, series, z_over_x = _common_terms(f, k, a, b, r, n)
    inv_pow = 1 / fk_pow
    correction = (
        (-b * (2 - b) * a * a / 24 * inv_pow + r * b * n * a / 4) * inv_pow
        + (2 - 3 * r * r) * n * n / 24
    ) * t + 1
    log_sq = log_fk * log_fk
    numerator = (log_sq * (1 / 1920) + 1 / 24) * log_sq + 1
    # (F K)^(beta / 2) = sqrt(F K) / (F K)^((1 - beta) / 2): one sqrt instead of a second pow
    return a * torch.sqrt(fk) * inv_pow * (numerator / series) * z_over_x * correction


def _chunked(core: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> torch.Tensor:
    """Evaluate an elementwise ``core`` on broadcast inputs, in cache-sized chunks on the CPU.

    The formulas are a few dozen elementwise kernels, memory-bound on large CPU batches; chunks
    keep the temporaries in cache (about 3x faster for a million options). Autograd flows
    through ``torch.cat``.

    Shape:
        inputs broadcast to ``(*)``; output ``(*)``.
    """
    shape = broadcast_shapes(*(x.shape for x in inputs))
    numel = math.prod(shape)
    fused = torch.compiler.is_compiling()  # one fused kernel has no temporaries to chunk
    if fused or inputs[0].device.type != "cpu" or numel <= 2 * _CPU_CHUNK:
        return core(*inputs)
    flat = [x.reshape(1) if x.numel() == 1 else x.broadcast_to(shape).reshape(-1) for x in inputs]
    pieces = [
        core(*(x if x.numel() == 1 else x[start : start + _CPU_CHUNK] for x in flat))
        for start in range(0, numel, _CPU_CHUNK)
    ]
    return torch.cat(pieces).reshape(shape)


def lognormal_vol(
    *,
    forward: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    alpha: TensorLike,
    beta: TensorLike,
    rho: TensorLike,
    nu: TensorLike,
    shift: TensorLike = 0.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Hagan's (shifted) Black implied volatility of the SABR model.

    For ``shift != 0`` this is the vol of Black's formula applied to ``(F + shift, K + shift)``.

    Args:
        forward: forward price ``F``; ``F + shift > 0``.
        strike: strike ``K``; ``K + shift > 0``.
        maturity: time to expiry in years, > 0.
        alpha: initial vol level, > 0.
        beta: CEV exponent in [0, 1].
        rho: correlation in (-1, 1).
        nu: vol of vol, >= 0.
        shift: displacement of forward and strike.
        dtype: floating dtype (default: the widest of the tensor inputs', else float64).
        device: device (default: that of the first tensor input, else CPU).

    Returns:
        The (shifted) lognormal implied volatility: Hagan's expansion, which breaks down (and
        can turn negative) for large ``nu^2 T`` in the far wings; returned as computed, so a
        caller can see where. :func:`price` refuses a negative one.

    Raises:
        ValueError: naming the field, the value and its index when an input is out of its domain,
            and the field of a complex input.

    Shape:
        All inputs broadcast to a common shape ``(*)``; the output has that shape.

    Note:
        Eager evaluation runs a few dozen elementwise kernels. For large CPU batches
        ``torch.compile(lognormal_vol)`` fuses them into one (5-10x faster on a million vols,
        after a compile of about half a minute; input validation stays eager).

    References:
        Hagan, Kumar, Lesniewski, Woodward (2002), "Managing smile risk", Wilmott Magazine,
        eqs. (2.17a)-(2.17b).

    Examples:
        >>> v = lognormal_vol(forward=0.039, strike=[0.03, 0.039, 0.05], maturity=1.0,
        ...                   alpha=0.3, beta=0.6, rho=0.01, nu=0.02)
        >>> v.shape, round(float(v[0]), 10)
        (torch.Size([3]), 1.1672583732)
    """
    inputs = _inputs(forward, strike, maturity, alpha, beta, rho, nu, shift, dtype, device)
    return _chunked(_lognormal_core, inputs)


def normal_vol(
    *,
    forward: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    alpha: TensorLike,
    beta: TensorLike,
    rho: TensorLike,
    nu: TensorLike,
    shift: TensorLike = 0.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Hagan's normal (Bachelier) implied volatility of the (shifted) SABR model.

    Uses the expanded form, eq. (B.69b) of Hagan et al. (2002), i.e. the expansion of (B.69a) in
    powers of ``log(F/K)``, the same expansion as QuantLib's ``sabrVolatility(..., Normal)``:
    ``alpha (FK)^(beta/2) (1 + L^2/24 + L^4/1920) / (1 + (1-beta)^2 L^2/24 + (1-beta)^4 L^4/1920)
    * z/x(z) * (1 + T [-beta (2-beta) alpha^2 / (24 (FK)^(1-beta)) + rho beta nu alpha
    / (4 (FK)^((1-beta)/2)) + (2 - 3 rho^2) nu^2 / 24])`` with ``L = log(F/K)``, evaluated at
    ``(F + shift, K + shift)`` (a shift does not change a Bachelier vol's meaning).

    Args:
        forward: forward price ``F``; ``F + shift > 0``.
        strike: strike ``K``; ``K + shift > 0``.
        maturity: time to expiry in years, > 0.
        alpha: initial vol level, > 0.
        beta: CEV exponent in [0, 1].
        rho: correlation in (-1, 1).
        nu: vol of vol, >= 0.
        shift: displacement of forward and strike.
        dtype: floating dtype (default: the widest of the tensor inputs', else float64).
        device: device (default: that of the first tensor input, else CPU).

    Returns:
        The normal implied volatility (in units of the forward per square-root year): like
        :func:`lognormal_vol`'s, it can turn negative where the expansion breaks down.

    Raises:
        ValueError: naming the field, the value and its index when an input is out of its domain,
            and the field of a complex input.

    Shape:
        All inputs broadcast to a common shape ``(*)``; the output has that shape.

    References:
        Hagan, Kumar, Lesniewski, Woodward (2002), "Managing smile risk", Wilmott Magazine,
        Appendix B, eqs. (B.69a)-(B.69b).

    Examples:
        >>> v = normal_vol(forward=0.03, strike=0.02, maturity=2.0,
        ...                alpha=0.01, beta=0.0, rho=0.0, nu=0.0)
        >>> round(float(v), 14)  # beta = 0, nu = 0 is the Bachelier model with vol alpha
        0.01
    """
    inputs = _inputs(forward, strike, maturity, alpha, beta, rho, nu, shift, dtype, device)
    return _chunked(_normal_core, inputs)


def _smallest_positive_root(
    c3: torch.Tensor, c2: torch.Tensor, c1: torch.Tensor, c0: torch.Tensor
) -> torch.Tensor:
    """Smallest positive real root of ``c3 a^3 + c2 a^2 + c1 a - c0`` (``c0 > 0``), batched.

    The roots are the reciprocals of the eigenvalues of the companion matrix of the reversed
    polynomial in ``y = 1 / a``, whose leading coefficient ``-c0`` never vanishes (so ``c3 = 0``,
    beta = 1, needs no special case); they are then polished by Newton steps. NaN where there is
    no positive root.

    Shape:
        All inputs ``(*)``; output ``(*)``.
    """
    row = torch.stack([c1 / c0, c2 / c0, c3 / c0], dim=-1)  # (*, 3)
    shifts = torch.eye(3, dtype=c0.dtype, device=c0.device)[:2].expand(*c0.shape, 2, 3)
    companion = torch.cat([row.unsqueeze(-2), shifts], dim=-2)  # (*, 3, 3)
    y = torch.linalg.eigvals(companion)  # (*, 3)
    usable = (y.real > 0) & (y.imag.abs() <= 1e-6 * y.abs())  # real up to a double root's split
    y_max = torch.where(usable, y.real, torch.zeros_like(y.real)).amax(dim=-1)
    root = torch.where(y_max > 0, 1 / y_max, torch.full_like(y_max, math.nan))
    for _ in range(3):
        value = ((c3 * root + c2) * root + c1) * root - c0
        slope = (3 * c3 * root + 2 * c2) * root + c1
        root = torch.where(slope != 0, root - value / slope, root)
    residual = ((c3 * root + c2) * root + c1) * root - c0
    # relative to the terms' size: a large root's terms cancel to c0 with their rounding error
    # (a = 960 at beta = 0.89, nu = 2.5, T = 24: terms ~1e7 against c0 ~ 1); and no tighter than
    # the dtype's rounding (float32 residuals of true roots reach ~1e-7 of the terms)
    a = root.abs()
    scale = ((c3.abs() * a + c2.abs()) * a + c1.abs()) * a + c0
    tol = max(1e-10, 64 * torch.finfo(root.dtype).eps)
    return torch.where(residual.abs() <= tol * scale, root, torch.full_like(root, math.nan))


_ATM_RTOL = {torch.float64: 1e-6, torch.float32: 1e-3}
"""How close (relative) :func:`alpha_from_atm_vol`'s alpha must bring Hagan's ATM vol, per dtype."""


def _check_root_accuracy(
    root: torch.Tensor,
    c3: torch.Tensor,
    c2: torch.Tensor,
    c1: torch.Tensor,
    vol: torch.Tensor,
    **named: torch.Tensor,
) -> None:
    """Refuse a root of :func:`alpha_from_atm_vol`'s cubic whose ATM vol rounding hides: the
    cubic's terms, of size ``scale``, cancel to ``vol``, so Hagan's ATM vol at the root, evaluated
    in the dtype, is off by up to about ``3 eps * scale`` (2.5 to 3.3 times ``eps * scale`` at
    most on 6,000 random cases). The root is kept where ``|p(root)| + 4 eps * scale`` is within
    :data:`_ATM_RTOL` of ``vol`` (1e-6 relative in float64: 0.01 bp of a vol of 100%; 1e-3 in
    other dtypes). With beta near 1, rho < 0 and a large ``nu^2 T`` the positive root is huge
    (alpha 1.6e7 at beta 0.999 for an ATM vol of 2, whose vol came back 1.95; 1.6e11 at beta
    0.99999, vol -1.1e7), and float32 fails sooner (vol -379 for 0.012 at beta 0.95, rho -0.9,
    nu 6, T 22; one rates-like case in a hundred was off by over 3.5e-4 relative).

    Shape:
        All inputs broadcast to ``(*)``; ``named`` (beta, rho, nu, maturity) for the message.
    """
    a = root.detach().abs()
    scale = ((c3.detach().abs() * a + c2.detach().abs()) * a + c1.detach().abs()) * a
    value = ((c3.detach() * a + c2.detach()) * a + c1.detach()) * a
    tol = _ATM_RTOL.get(root.dtype, 1e-3)
    error = ((value - vol.detach()).abs() + 4 * torch.finfo(root.dtype).eps * scale) / vol.detach()
    ok = torch.broadcast_to(error <= tol, root.shape)
    if bool(ok.all()):
        return
    i = tuple(int(k) for k in torch.nonzero(~ok)[0])

    def at(x: torch.Tensor) -> float:
        return float(torch.broadcast_to(x.detach(), root.shape)[i])

    inputs = ", ".join(f"{k}={at(x):g}" for k, x in named.items())
    where = f" at index {i[0] if len(i) == 1 else i}" if i else ""
    raise ValueError(
        f"atm_vol {at(vol):g}{where} is not reproducible in {root.dtype}: with {inputs} "
        f"the root a = alpha / (F + shift)^(1 - beta) = {at(a):.6g} leaves Hagan's ATM vol a "
        f"difference of terms {at(scale) / at(vol):.3g} times atm_vol, whose rounding exceeds "
        f"{tol:g} relative (a lower beta, |rho|, nu or maturity shrinks them; float32 fails "
        "before float64)"
    )


def alpha_from_atm_vol(
    *,
    forward: TensorLike,
    maturity: TensorLike,
    atm_vol: TensorLike,
    beta: TensorLike,
    rho: TensorLike,
    nu: TensorLike,
    shift: TensorLike = 0.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The SABR alpha whose Hagan ATM (shifted) lognormal vol equals ``atm_vol``.

    At ``K = F`` Hagan's formula reads ``atm_vol = a (1 + T [(1-beta)^2 a^2 / 24
    + rho beta nu a / 4 + (2 - 3 rho^2) nu^2 / 24])`` with ``a = alpha / (F + shift)^(1-beta)``,
    a cubic in ``a``; following West (2005) we take its smallest positive real root. Gradients
    with respect to every input follow from the implicit function theorem (one Newton step is
    taken inside the autograd graph at the converged root).

    Args:
        forward: forward price ``F``; ``F + shift > 0``.
        maturity: time to expiry in years, > 0.
        atm_vol: at-the-money (shifted) Black vol, > 0.
        beta: CEV exponent in [0, 1].
        rho: correlation in (-1, 1).
        nu: vol of vol, >= 0.
        shift: displacement of the forward.
        dtype: floating dtype (default: the widest of the tensor inputs', else float64).
        device: device (default: that of the first tensor input, else CPU).

    Returns:
        alpha, > 0, whose Hagan ATM vol (evaluated in the dtype) is within 1e-6 relative of
        ``atm_vol`` in float64 (1e-3 in float32).

    Raises:
        ValueError: when an input is out of its domain or complex, or when no positive alpha
            reproduces ``atm_vol`` (possible only for beta = 1 with rho < 0), naming the field
            and index; or when the root's ATM vol is lost to rounding (its cubic's terms
            cancelling, for beta near 1, rho < 0 and a large ``nu^2 T``, or sooner in float32),
            naming the index, beta, rho, nu and maturity.

    Shape:
        All inputs broadcast to a common shape ``(*)``; the output has that shape.

    References:
        Hagan et al. (2002), eq. (2.18); G. West (2005), "Calibration of the SABR model in
        illiquid markets", Applied Mathematical Finance 12(4), section 2.

    Examples:
        >>> a = alpha_from_atm_vol(forward=0.03, maturity=5.0, atm_vol=0.2, beta=0.5,
        ...                        rho=-0.3, nu=0.4)
        >>> v = lognormal_vol(forward=0.03, strike=0.03, maturity=5.0, alpha=a, beta=0.5,
        ...                   rho=-0.3, nu=0.4)
        >>> abs(float(v) - 0.2) < 1e-14
        True
    """
    f, t, v, b, r, n, s = named_tensors(forward=forward, maturity=maturity, atm_vol=atm_vol,
                                        beta=beta, rho=rho, nu=nu, shift=shift, dtype=dtype,
                                        device=device)  # fmt: skip
    _check_range("shift", s)
    f = _shifted(f, s, shift)
    _check_range("forward + shift", f, 0.0)
    _check_range("maturity", t, 0.0)
    _check_range("atm_vol", v, 0.0)
    _check_range("beta", b, 0.0, 1.0, closed="lh")
    _check_range("rho", r, -1.0, 1.0)
    _check_range("nu", n, 0.0, closed="l")
    c3 = (1 - b) ** 2 * t / 24
    c2 = r * b * n * t / 4
    c1 = 1 + (2 - 3 * r * r) * n * n * t / 24
    with torch.no_grad():  # detach also drops forward-mode (dual) tangents
        root = _smallest_positive_root(c3.detach(), c2.detach(), c1.detach(), v.detach())
    check_where("atm_vol", v, ~torch.isnan(root), "reachable by a positive alpha")
    _check_root_accuracy(root, c3, c2, c1, v, beta=b, rho=r, nu=n, maturity=t)
    # At the root this step changes nothing but carries d(root) = -dp / p'(root) for autograd.
    value = ((c3 * root + c2) * root + c1) * root - v
    slope = (3 * c3 * root + 2 * c2) * root + c1
    return (root - value / slope) * f ** (1 - b)


def price(
    *,
    forward: TensorLike,
    strike: TensorLike,
    maturity: TensorLike,
    alpha: TensorLike,
    beta: TensorLike,
    rho: TensorLike,
    nu: TensorLike,
    shift: TensorLike = 0.0,
    discount: TensorLike = 1.0,
    is_call: bool | TensorLike = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """European option prices from Hagan's SABR vol in (shifted) Black's formula.

    Args:
        forward: forward price ``F``; ``F + shift > 0``.
        strike: strike ``K``; ``K + shift > 0``.
        maturity: time to expiry in years, > 0.
        alpha: initial vol level, > 0.
        beta: CEV exponent in [0, 1].
        rho: correlation in (-1, 1).
        nu: vol of vol, >= 0.
        shift: displacement of forward and strike.
        discount: discount factor to the payment date.
        is_call: True for calls, False for puts (broadcast).
        dtype: floating dtype (default: the widest of the tensor inputs', else float64).
        device: device (default: that of the first tensor input, else CPU).

    Returns:
        Black's price of the call (or put) at Hagan's vol, i.e. Hagan's approximation of
        ``discount * E[(F_T - K)^+]`` (or ``discount * E[(K - F_T)^+]``). It is not arbitrage-free
        at low strikes and long maturities: there the prices are concave in the strike (the
        density they imply is negative) while the vol is still positive, e.g. below ``K = 0.0073``
        for ``F = 0.03``, ``T = 10``, ``alpha = 0.035``, ``beta = 0.5``, ``rho = -0.3``,
        ``nu = 0.4`` (an ATM vol of 22%; below ``K = 0.002`` at ``T = 5``). Neither checked nor
        corrected; QuantLib's PDE (:func:`pricing.quantlib.sabr_fd_price`) prices the model itself.

    Raises:
        ValueError: naming the field and index for inputs out of their domain, the field of a
            complex input, and ``volatility`` where Hagan's expansion breaks down and gives a
            negative vol.

    Shape:
        All inputs broadcast to a common shape ``(*)``; the output has that shape.

    References:
        Hagan et al. (2002), eq. (2.17a), in Black (1976)'s formula.

    Examples:
        >>> p = price(forward=0.03, strike=0.03, maturity=1.0, alpha=0.2, beta=1.0, rho=0.0, nu=0.0)
        >>> round(float(p), 8)  # beta = 1, nu = 0 is Black's model with vol alpha
        0.00238967
    """
    check_real(discount=discount)  # the others are checked by lognormal_vol
    # the discount counts among the inputs that set the dtype, and takes a given one: a float64
    # discount made a float64 price of dtype=torch.float32
    dtype, device = common_dtype_device(
        [forward, strike, maturity, alpha, beta, rho, nu, shift, discount], dtype, device
    )
    vol = lognormal_vol(
        forward=forward,
        strike=strike,
        maturity=maturity,
        alpha=alpha,
        beta=beta,
        rho=rho,
        nu=nu,
        shift=shift,
        dtype=dtype,
        device=device,
    )
    f, k, s, t, d = named_tensors(forward=forward, strike=strike, shift=shift, maturity=maturity,
                                  discount=discount, dtype=vol.dtype, device=vol.device)  # fmt: skip
    return black_price(
        forward=f + s, strike=k + s, maturity=t, volatility=vol, discount=d, is_call=is_call
    )
