"""Neural surrogate pricers: (model parameters, log-moneyness, maturity) -> Black implied vol.

The network never sees raw inputs and never predicts a raw vol. A model-specific closed-form
*base* vol carries the level (Heston: the root of the expected average variance
``theta + (v0 - theta) (1 - exp(-kappa T)) / (kappa T)``; SABR: Hagan's lognormal vol at
``F = 1``, so that a SABR surrogate trained on PDE labels learns the correction of Hagan's
expansion) and the network learns the standardised log-ratio ``log(iv / base)`` from standardised
features (the parameters mapped to ``[-1, 1]`` over the domain, ``sqrt(T)``, ``z``, ``log(base)``
and the moneyness in units of the base total vol). Training (:mod:`qfnet.surrogate_training`)
minimises the squared implied-vol error in basis points.

A surrogate refuses queries outside its training domain (:class:`pricing.datasets.DomainError`)
unless asked explicitly to flag them with NaN. It is saved as one self-describing file
(``model.pt``: domain, feature set, scalers, architecture, library versions, training summary),
loaded with ``torch.load(weights_only=True)``.

References:
    B. Horvath, A. Muguruza, M. Tomas (2021), "Deep learning volatility", Quantitative Finance
    21(1), 11-27 (neural implied-vol maps of stochastic-vol models).
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pricing import black_scholes
from pricing._special import ndtr
from pricing._typing import broadcast_named, broadcast_shapes, call_flags, ordinary, real_tensor
from pricing._validation import check_device, check_finite, check_positive
from pricing.datasets import DOMAINS, Domain, DomainError
from qfnet._paths import data_dir, missing_hint
from qfnet.nets import MLP
from qfnet.training.checkpoint import (
    ModelFileError,
    damage_summary,
    load_verified,
    save_atomically,
)

__all__ = [
    "BASES",
    "DEFAULT_BASE",
    "DEFAULT_SURROGATE",
    "SABR_PDE_SURROGATE",
    "SurrogateNet",
    "build_surrogate",
    "default_surrogate_path",
    "greeks",
    "implied_vol",
    "load_surrogate",
    "price",
    "save_surrogate",
]

FORMAT = "qfnet-surrogate"
FORMAT_VERSION = 1
FEATURES = "base-vol log-ratio v1"
"""Name of the feature map :meth:`SurrogateNet.features` computes (a file's ``features`` field)."""
_READ_FEATURES = (FEATURES,)  # every feature map a qfnet surrogate file has named
DEFAULT_SURROGATE = data_dir() / "surrogates" / "heston_default"
"""Directory of the shipped default Heston surrogate (``model.pt`` inside; ``$QFNET_DATA``
relocates the ``data/`` folder, see :mod:`qfnet._paths`)."""
SABR_PDE_SURROGATE = DEFAULT_SURROGATE.parent / "sabr_pde"
"""Directory of the shipped SABR surrogate trained on QuantLib PDE labels (``model.pt`` inside)."""


def default_surrogate_path() -> Path:
    """Path of the shipped default Heston surrogate file.

    Examples:
        >>> path = default_surrogate_path()
        >>> path.name, path.is_file()
        ('model.pt', True)
    """
    return DEFAULT_SURROGATE / "model.pt"


def _unit(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map ``[low, high]`` affinely onto ``[-1, 1]``; a fixed value (``low == high``, a SABR
    domain of ``beta = 0.5`` alone) onto 0: it was 0/0, and training refused every row as
    "non-finite"."""
    if high == low:
        return torch.zeros_like(x)
    return (2.0 * x - (low + high)) / (high - low)


def _heston_base(x: torch.Tensor) -> torch.Tensor:
    """Root of the expected average variance over ``[0, T]`` (the ATM vol to first order)."""
    v0, kappa, theta, t = x[:, 0], x[:, 1], x[:, 2], x[:, 5]
    kt = kappa * t
    weight = -torch.expm1(-kt) / kt  # (1 - exp(-kappa T)) / (kappa T), kappa T > 0 in the domain
    return torch.sqrt(theta + (v0 - theta) * weight)


def _sabr_base(x: torch.Tensor) -> torch.Tensor:
    """SABR's ``alpha`` quoted for ``F = 1`` (the lognormal-equivalent vol level; always > 0)."""
    return x[:, 0]


def _sabr_hagan_base(x: torch.Tensor) -> torch.Tensor:
    """Hagan's lognormal SABR vol at ``F = 1``, floored at ``alpha / 4`` (the expansion can turn
    negative in long-dated low-strike wings). The network then learns the correction of Hagan's
    formula towards the labelling engine (exact for Hagan labels, small for PDE labels).
    ``beta`` is clipped to [0, 1]: a query within the domain's edge tolerance of beta = 1 (say
    1 + 2e-16, or a float32 value rounded up) is inside the domain but not a valid SABR beta."""
    from pricing.sabr import lognormal_vol

    alpha = x[:, 0]
    vol = lognormal_vol(forward=1.0, strike=torch.exp(x[:, 5]), maturity=x[:, 4], alpha=alpha,
                        beta=x[:, 1].clamp(0.0, 1.0), rho=x[:, 2], nu=x[:, 3])  # fmt: skip
    return torch.maximum(torch.nan_to_num(vol, nan=0.0), 0.25 * alpha)


_BLOCK_ROWS = 2048

BASES = {
    "heston-variance": _heston_base,
    "sabr-alpha": _sabr_base,
    "sabr-hagan": _sabr_hagan_base,
}
"""Closed-form base vols by name: the surrogate learns ``log(iv / base)``."""
DEFAULT_BASE = {"heston": "heston-variance", "sabr": "sabr-hagan"}
_LEGACY_BASE = {"heston": "heston-variance", "sabr": "sabr-alpha"}  # files without the field


class SurrogateNet(nn.Module):
    """Implied-vol surrogate of one model over one domain (a plain module; trained elsewhere).

    Args:
        domain: the training domain (queries outside it are refused by :func:`implied_vol`).
        hidden: widths of the hidden layers of the MLP.
        activation: smooth activations (``silu``, ``softplus``, ``tanh``) keep greeks smooth.
        dtype: dtype of the MLP weights (float32 by default: 2-3x faster on CPU, and its rounding
            is ~1e-7 relative in the output vol); features and output are computed in float64.
        base: closed-form base vol (a key of :data:`BASES` for the domain's model; default
            :data:`DEFAULT_BASE`: Heston's average variance, Hagan's formula for SABR).

    Shape:
        - input: (N, P + 2), columns ``domain.input_names`` (parameters, maturity, log_moneyness)
        - output: (N,) Black implied vols, float64

    Examples:
        >>> from pricing.datasets import HESTON_DOMAIN
        >>> net = build_surrogate(HESTON_DOMAIN, hidden=(8,))
        >>> x = torch.tensor([[0.04, 1.5, 0.04, 0.5, -0.7, 1.0, 0.0]], dtype=torch.float64)
        >>> net(x).shape
        torch.Size([1])
    """

    def __init__(
        self,
        domain: Domain,
        *,
        hidden: Sequence[int] = (128, 128, 128, 128),
        activation: str = "silu",
        dtype: torch.dtype = torch.float32,
        base: str | None = None,
    ) -> None:
        super().__init__()
        if domain.model not in DEFAULT_BASE:
            raise ValueError(f"no surrogate features for model {domain.model!r}")
        base = base or DEFAULT_BASE[domain.model]
        if base not in BASES or not base.startswith(domain.model + "-"):
            choices = sorted(b for b in BASES if b.startswith(domain.model + "-"))
            raise ValueError(f"base for {domain.model} must be one of {choices}, got {base!r}")
        self.base = base
        self.domain = domain
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        n_features = len(domain.input_names) + 2
        self.mlp = MLP(n_features, 1, hidden=self.hidden, activation=activation).to(dtype)
        self.register_buffer("in_mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("in_std", torch.ones(n_features, dtype=torch.float64))
        self.register_buffer("out_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("out_std", torch.ones((), dtype=torch.float64))

    def base_vol(self, x: torch.Tensor) -> torch.Tensor:
        """Closed-form base vol that the network corrects. Shape: (N, P + 2) -> (N,)."""
        return BASES[self.base](x)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled features (N, F) and base vol (N,) of raw inputs (N, P + 2)."""
        d = self.domain
        n_params = len(d.param_names)
        base = self.base_vol(x)
        t, k = x[:, n_params], x[:, n_params + 1]
        root_t = torch.sqrt(t)
        cols = [_unit(x[:, j], *d.bounds(name)) for j, name in enumerate(d.param_names)]
        cols.append(_unit(root_t, *(b**0.5 for b in d.maturity)))
        cols.append(k / (d.z_scale * root_t * max(abs(d.z[0]), abs(d.z[1]))))
        cols.append(torch.log(base))
        cols.append(k / (base * root_t))
        return torch.stack(cols, dim=-1), base  # (N, F), (N,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, base = self.features(x.to(torch.float64))
        scaled = ((feats - self.in_mean) / self.in_std).to(self.mlp.head.weight.dtype)
        # cache-sized row blocks: 2-3x faster on CPU than one pass over a large batch
        out = torch.cat([self.mlp(block) for block in scaled.split(_BLOCK_ROWS)])  # (N, 1)
        out = out.squeeze(-1).to(torch.float64)
        return base * torch.exp(self.out_mean + self.out_std * out)

    @torch.no_grad()
    def fit_scalers(self, x: torch.Tensor, iv: torch.Tensor) -> None:
        """Set the input and output standardisation from training inputs and implied vols.

        Shape:
            - x: (N, P + 2), N >= 2
            - iv: (N,)

        Raises:
            ValueError: fewer than two rows (no standard deviation), or a row whose features or
                ``log(iv / base)`` are not finite (the scalers would be NaN, and every
                prediction with them).
        """
        if len(x) < 2 or len(iv) != len(x):
            raise ValueError(f"fit_scalers needs at least 2 rows of inputs and as many implied "
                             f"vols, got {len(x)} and {len(iv)}")  # fmt: skip
        feats, base = self.features(x.to(torch.float64))
        log_ratio = torch.log(iv.to(torch.float64) / base)
        bad = ~(torch.isfinite(feats).all(dim=1) & torch.isfinite(log_ratio))
        if bad.any():  # checked before any scaler is set: a refused call leaves them as they were
            row = int(torch.nonzero(bad)[0])
            raise ValueError(f"fit_scalers: row {row} has a non-finite input or a non-positive "
                             f"implied vol ({int(bad.sum())} such rows)")  # fmt: skip
        self.in_mean.copy_(feats.mean(0))
        self.in_std.copy_(feats.std(0).clamp_min(1e-12))
        self.out_mean.copy_(log_ratio.mean())
        self.out_std.copy_(log_ratio.std().clamp_min(1e-12))


def build_surrogate(
    domain: Domain | str,
    *,
    hidden: Sequence[int] = (128, 128, 128, 128),
    activation: str = "silu",
    dtype: torch.dtype = torch.float32,
    base: str | None = None,
) -> SurrogateNet:
    """A fresh surrogate for a domain (or a model name, taking its default domain); ``base`` as
    in :class:`SurrogateNet`.

    Examples:
        >>> build_surrogate("heston", hidden=(16, 16)).domain.model
        'heston'
    """
    if isinstance(domain, str):
        if domain not in DOMAINS:
            raise ValueError(f"model must be one of {sorted(DOMAINS)}, got {domain!r}")
        domain = DOMAINS[domain]
    return SurrogateNet(domain, hidden=hidden, activation=activation, dtype=dtype, base=base)


def _versions() -> dict[str, str]:
    import qfnet

    return {
        "qfnet": str(qfnet.__version__),
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def save_surrogate(
    net: SurrogateNet, path: str | os.PathLike[str], *, training: Mapping[str, Any] | None = None
) -> Path:
    """Write ``net`` as one self-describing file (atomically: temp file + rename).

    Args:
        net: the surrogate.
        path: target file (conventionally ``RUN/model.pt``).
        training: JSON-like summary stored alongside (dataset, epochs, validation errors).

    Returns:
        The file written.

    Examples:
        >>> import tempfile
        >>> net = build_surrogate("sabr", hidden=(8,))
        >>> x = torch.tensor([[0.2, 0.5, -0.3, 0.6, 1.0, 0.0]], dtype=torch.float64)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_surrogate(net, f"{tmp}/run/model.pt", training={"epochs": 0})
        ...     again = load_surrogate(path)
        >>> path.name, again.domain.model, torch.equal(again(x), net(x))
        ('model.pt', 'sabr', True)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": net.domain.model,
        "domain": net.domain.to_dict(),
        "architecture": {
            "hidden": list(net.hidden),
            "activation": net.activation,
            "dtype": str(net.mlp.head.weight.dtype).removeprefix("torch."),
            "features": FEATURES,
            "base": net.base,
        },
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "versions": _versions(),
        "training": dict(training or {}),
    }
    return save_atomically(payload, target)


# ordinary weights when loaded inside an inference_mode block too: greeks differentiate through
# them, and a net loaded there made them fail ("Inference tensors cannot be saved for backward")
@torch.inference_mode(False)
def load_surrogate(
    path: str | os.PathLike[str] | None = None, *, device: torch.device | str | None = None
) -> SurrogateNet:
    """Load a surrogate file, or the ``model.pt`` of a run directory (default: the shipped one).

    The weights are frozen (``requires_grad=False``); autograd still differentiates with respect
    to the inputs, as :func:`greeks` does.

    Raises:
        FileNotFoundError: no such file.
        qfnet.training.checkpoint.ModelFileError: (a ValueError) the file is not a qfnet
            surrogate of this format version, names a feature map this qfnet does not compute,
            or is corrupt (cut, a damaged byte: the archive's checksums are verified, a missing
            field, a dtype other than its weights', scalers not finite or a std <= 0), or is a
            directory without a ``model.pt``: the message names the file.
        ValueError: ``device`` is not a torch device here (``"cuda"`` without CUDA).

    Examples:
        >>> net = load_surrogate()
        >>> net.domain.model
        'heston'
    """
    if device is not None:  # "cuda" without CUDA was torch's bare AssertionError, after the load
        device = check_device(device)
    target = Path(path) if path is not None else default_surrogate_path()
    if target.is_dir() and (target / "model.pt").exists():  # a run directory
        target = target / "model.pt"
    if not target.exists():
        shipped = DEFAULT_SURROGATE.parent in target.parents
        hint = f" ({missing_hint()})" if shipped else ""
        raise FileNotFoundError(f"surrogate file {target} does not exist{hint}")
    if target.is_dir():  # it was "surrogate file .../model.pt/model.pt does not exist"
        raise ModelFileError(target, f"{target} is a directory, neither a surrogate file nor a "
                             "run holding one (model.pt)")  # fmt: skip
    # its CRCs checked: a flipped bit in a weight loaded without a word
    payload = load_verified(target, "surrogate file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(target, f"{target} is not a {FORMAT} file")
    version = payload.get("format_version")
    # a newer file was read as this one; True (== 1) and 1.0 passed the != test
    if type(version) is not int or version != FORMAT_VERSION:
        raise ModelFileError(target, f"{target} is {FORMAT} version {version!r}; this qfnet "
                             f"reads version {FORMAT_VERSION}")  # fmt: skip
    _check_features(payload, target)
    try:
        net = _from_payload(payload)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # a field missing or damaged
        reason = f"{target} is a corrupt {FORMAT} file: {damage_summary(exc)}"
        raise ModelFileError(target, reason) from exc
    net.requires_grad_(False)  # an inference model: gradients flow to the inputs only (greeks)
    return net.eval().to(device) if device is not None else net.eval()


def _check_features(payload: Mapping[str, Any], target: Path) -> None:
    """Refuse a file whose weights were trained on a feature map this qfnet does not compute
    (``features`` edited to "foo" loaded without a word)."""
    arch = payload.get("architecture")
    if not isinstance(arch, dict):
        return  # named as a missing or damaged field by _from_payload
    features = arch.get("features")
    if features not in _READ_FEATURES:
        raise ModelFileError(target, f"{target}: field architecture.features is {features!r}, "
                             f"a feature map this qfnet does not compute (it reads "
                             f"{' or '.join(map(repr, _READ_FEATURES))})")  # fmt: skip


def _from_payload(payload: Mapping[str, Any]) -> SurrogateNet:
    arch = payload["architecture"]
    dtype = getattr(torch, arch["dtype"], None)  # a name torch lacks was an AttributeError
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"architecture dtype {arch['dtype']!r} is not a torch floating dtype")
    state = payload["state_dict"]
    if not isinstance(state, Mapping):  # its .items() below was an AttributeError traceback
        raise TypeError(f"field 'state_dict' must be a mapping, got {type(state).__name__}")
    weights = {v.dtype for k, v in state.items()
               if k.startswith("mlp.") and isinstance(v, torch.Tensor)}  # fmt: skip
    if weights - {dtype}:  # "bfloat16" over float32 weights rounded them without a word
        found = sorted(str(w).removeprefix("torch.") for w in weights)
        raise ValueError(f"architecture dtype {arch['dtype']!r} is not its weights' dtype "
                         f"({', '.join(found)})")  # fmt: skip
    net = SurrogateNet(
        Domain.from_dict(payload["domain"]),
        hidden=arch["hidden"],
        activation=arch["activation"],
        dtype=dtype,
        base=arch.get("base", _LEGACY_BASE[payload["model"]]),
    )
    net.load_state_dict(state)
    _check_scalers(net)
    training = payload.get("training", {})
    if not isinstance(training, dict):  # fine-tuning from it failed on a list's .get
        raise TypeError(f"field 'training' must be a mapping, got {type(training).__name__}")
    net.training_summary = training
    return net


def _check_scalers(net: SurrogateNet) -> None:
    """A standardisation that is not finite, or a scale <= 0 (never written: fit_scalers floors
    them at 1e-12), gave NaN or wrong vols without a word."""
    for name in ("in_mean", "in_std", "out_mean", "out_std"):
        values, scale = getattr(net, name), name.endswith("std")
        bad = ~torch.isfinite(values) | (values <= 0.0) if scale else ~torch.isfinite(values)
        if bad.any():
            need = "finite and > 0" if scale else "finite"
            raise ValueError(f"state_dict {name!r} must be {need}, got "
                             f"{values.reshape(-1)[bad.reshape(-1)][0].item()}")  # fmt: skip


def _tensors(values: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Named inputs as float64 tensors on ``device``; a bool (``rho=False`` priced rho = 0) or a
    value that is not real numbers (a string such as ``"0.2"``, None, a complex) is refused
    naming its field, as the pricers refuse them (:func:`pricing._typing.real_tensor`)."""
    return {n: real_tensor(n, v, dtype=torch.float64, device=device) for n, v in values.items()}


def _query(net: SurrogateNet, columns: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Size]:
    names = net.domain.input_names
    missing = [n for n in names if n not in columns]
    if missing:
        raise TypeError(f"{net.domain.model} surrogate query is missing {missing}")
    extra = sorted(set(columns) - set(names))
    if extra:
        raise TypeError(f"unexpected {net.domain.model} surrogate argument(s) {extra}")
    tensors = _tensors({n: columns[n] for n in names}, net.in_mean.device)
    shape = broadcast_named(tensors, "surrogate input")
    return torch.stack([t.expand(shape).reshape(-1) for t in tensors.values()], dim=-1), shape


def implied_vol(
    net: SurrogateNet,
    *,
    maturity: Any,
    log_moneyness: Any,
    out_of_domain: str = "raise",
    **params: Any,
) -> torch.Tensor:
    """Surrogate Black implied vol at ``log_moneyness = ln(K / F)`` and ``maturity``.

    Args:
        net: a surrogate.
        maturity: years.
        log_moneyness: ``ln(K / F)``.
        out_of_domain: ``"raise"`` (default: :class:`pricing.datasets.DomainError` naming the field
            and row) or ``"nan"`` (those entries are NaN: an explicit flag, never an extrapolation).
        **params: model parameters by name (Heston: v0, kappa, theta, sigma, rho).

    Shape:
        All inputs broadcast; the output (float64) has the broadcast shape.

    Examples:
        >>> net = load_surrogate()
        >>> iv = implied_vol(net, maturity=1.0, log_moneyness=0.0, v0=0.04, kappa=1.5,
        ...                  theta=0.04, sigma=0.3, rho=-0.7)
        >>> abs(float(iv) - 0.1893) < 0.001  # Heston ATM vol 0.18930 (Fourier pricer)
        True
    """
    given = [*params.values(), maturity, log_moneyness]
    return _implied_vol(net, maturity, log_moneyness, out_of_domain, params, given)


def _implied_vol(
    net: SurrogateNet,
    maturity: Any,
    log_moneyness: Any,
    out_of_domain: str,
    params: Mapping[str, Any],
    given: Sequence[Any],
) -> torch.Tensor:
    """:func:`implied_vol`, the domain's edges as tolerant as the least precise of ``given``,
    the caller's own inputs (a price's float32 spot and strike make a float64 log-moneyness as
    rounded as they are)."""
    if out_of_domain not in ("raise", "nan"):
        raise ValueError(f"out_of_domain must be 'raise' or 'nan', got {out_of_domain!r}")
    x, shape = _query(net, {**params, "maturity": maturity, "log_moneyness": log_moneyness})
    columns = dict(zip(net.domain.input_names, x.detach().T, strict=True))
    if out_of_domain == "raise":
        net.domain.check(columns, given)
        return net(x).reshape(shape)
    inside = torch.as_tensor(net.domain.contains(columns, given), device=x.device)
    safe = torch.where(inside[:, None], x, _centre(net.domain, x))
    iv = net(safe)
    return torch.where(inside, iv, torch.full_like(iv, float("nan"))).reshape(shape)


def _centre(domain: Domain, like: torch.Tensor) -> torch.Tensor:
    """A query at the centre of the domain (stands in for flagged rows so nothing blows up)."""
    values = [0.5 * (lo + hi) for _, lo, hi in domain.params]
    values += [0.5 * (domain.maturity[0] + domain.maturity[1]), 0.0]
    return torch.tensor(values, dtype=like.dtype, device=like.device).expand_as(like)


def _at_unit_forward(
    net: SurrogateNet, params: dict[str, Any], forward: torch.Tensor
) -> dict[str, Any]:
    """Model parameters at the forward ``F`` as the surrogate's ``F = 1`` quotes them: SABR's
    ``alpha`` becomes ``alpha F^(beta - 1)`` (the same dynamics for ``F_t / F``, as
    :func:`qfnet.surrogate_cli.surrogate_price_rows` does with it); Heston's do not move."""
    if net.domain.model != "sabr" or not {"alpha", "beta"} <= params.keys():
        return params  # a missing field is named by implied_vol
    alpha, beta = _tensors({n: params[n] for n in ("alpha", "beta")}, forward.device).values()
    return {**params, "alpha": alpha * forward ** (beta - 1.0)}


def _given_alpha(
    error: DomainError, net: SurrogateNet, params: Mapping[str, Any], forward: torch.Tensor
) -> DomainError:
    """A SABR alpha outside the box is named as rescaled to ``F = 1`` (0.6 for alpha = 6 at
    F = 100, beta = 0.5), a value the caller never gave: add the given alpha and the rescaling."""
    found = re.match(r"alpha = \S+ at index (\d+)", str(error))
    if net.domain.model != "sabr" or found is None:
        return error
    values = _tensors(params, forward.device)
    shape = broadcast_shapes(forward.shape, *(t.shape for t in values.values()))  # its rows
    row = int(found[1])
    alpha, beta, f = (float(x.expand(shape).reshape(-1)[row])
                      for x in (values["alpha"], values["beta"], forward))  # fmt: skip
    return DomainError(f"{error}; it reads alpha at F = 1: alpha F^(beta - 1) = {alpha:g} * "
                       f"{f:g}^({beta:g} - 1) there")  # fmt: skip


def price(
    net: SurrogateNet,
    *,
    spot: Any,
    strike: Any,
    maturity: Any,
    rate: Any = 0.0,
    dividend: Any = 0.0,
    is_call: bool | torch.Tensor = True,
    out_of_domain: str = "raise",
    **params: Any,
) -> torch.Tensor:
    """European option price: Black's formula at the surrogate implied vol.

    The forward is ``spot * exp((rate - dividend) * maturity)`` and the discount
    ``exp(-rate * maturity)``; ``out_of_domain`` is as in :func:`implied_vol` (``"nan"`` gives NaN
    prices for those rows). SABR parameters are those at this forward: a SABR surrogate quotes
    ``F = 1``, so ``alpha`` is rescaled to ``alpha F^(beta - 1)`` (as ``qfnet price`` does).

    Shape:
        All inputs broadcast; the output (float64) has the broadcast shape.

    Examples:
        >>> p = price(load_surrogate(), spot=100.0, strike=100.0, maturity=1.0, v0=0.04,
        ...           kappa=1.5, theta=0.04, sigma=0.3, rho=-0.7)
        >>> 7.0 < float(p) < 8.0
        True
    """
    market = dict(spot=spot, strike=strike, maturity=maturity, rate=rate, dividend=dividend)
    return _price(net, market, is_call, out_of_domain, params, [*market.values(), *params.values()])


def _price(
    net: SurrogateNet,
    market: Mapping[str, Any],
    is_call: bool | torch.Tensor,
    out_of_domain: str,
    params: Mapping[str, Any],
    given: Sequence[Any],
) -> torch.Tensor:
    """:func:`price` of ``market`` (spot, strike, maturity, rate, dividend), the domain's edges
    as tolerant as the least precise of ``given``, the caller's own inputs (float32 ones are as
    rounded in the float64 log-moneyness made of them: see :func:`_implied_vol`)."""
    market = _tensors(market, net.in_mean.device)
    shape = broadcast_named(market, "surrogate input")
    s, k, t, r, q = (market[n].expand(shape) for n in ("spot", "strike", "maturity", "rate",
                                                        "dividend"))  # fmt: skip
    # spot, strike and rates are checked here: a NaN spot was reported as a log_moneyness
    # outside the domain
    check_positive(spot=s, strike=k)
    check_finite(rate=r, dividend=q)
    forward = s * torch.exp((r - q) * t)
    log_k = torch.log(k / forward)
    try:
        iv = _implied_vol(net, t, log_k, out_of_domain, _at_unit_forward(net, params, forward),
                          given)  # fmt: skip
    except DomainError as error:
        raise _given_alpha(error, net, params, forward) from None
    ok = torch.isfinite(iv)
    # a flagged row's maturity may be NaN or <= 0 (out_of_domain="nan"): Black's formula refused
    # the whole batch for it ("forward must be finite")
    t = torch.where(ok, t, 1.0)
    forward = s * torch.exp((r - q) * t)
    value = black_scholes.black_price(
        forward=forward,
        strike=k,
        maturity=t,
        volatility=torch.where(ok, iv, 0.0),
        discount=torch.exp(-r * t),
        is_call=is_call,
    )
    return torch.where(ok, value, torch.full_like(value, float("nan")))


def _smooth_price(
    net: SurrogateNet,
    strike: torch.Tensor,
    dividend: torch.Tensor,
    is_call: bool | torch.Tensor,
    leaves: dict[str, torch.Tensor],
    given: Sequence[Any],
) -> torch.Tensor:
    """Black-76 in its textbook form ``D (F N(d1) - K N(d2))``: differentiable at ``K = F`` too
    (``given``: the caller's inputs, whose precision sets the domain's edge tolerance).

    The accurate :func:`pricing.black_scholes.black_price` splits the price into intrinsic and
    time value, whose autograd derivatives do not add up at exactly ``K = F``; greeks only need
    a formula that is smooth there.
    """
    spot, t, r = leaves["spot"], leaves["maturity"], leaves["rate"]
    forward = spot * torch.exp((r - dividend) * t)
    params = _at_unit_forward(net, {n: leaves[n] for n in net.domain.param_names}, forward)
    iv = _implied_vol(net, t, torch.log(strike / forward), "raise", params, given)
    total = iv * torch.sqrt(t)
    d1 = torch.log(forward / strike) / total + 0.5 * total
    call = torch.exp(-r * t) * (forward * ndtr(d1) - strike * ndtr(d1 - total))
    flag = call_flags(is_call, device=call.device)  # 0/1 were not booleans for torch.where
    return torch.where(flag, call, call - torch.exp(-r * t) * (forward - strike))


# ordinary tensors inside an inference_mode block too, whose tensors autograd refuses (and which
# enable_grad does not lift): "element 0 of tensors does not require grad and does not have a
# grad_fn" (as pricing.heston.delta)
@torch.inference_mode(False)
def greeks(
    net: SurrogateNet,
    *,
    spot: Any,
    strike: Any,
    maturity: Any,
    rate: Any = 0.0,
    dividend: Any = 0.0,
    is_call: bool | torch.Tensor = True,
    **params: Any,
) -> dict[str, torch.Tensor]:
    """Price and its sensitivities by automatic differentiation through the surrogate.

    ``delta`` and ``gamma`` move the spot with the model parameters fixed (so the smile moves
    with the forward, as in the model); ``theta`` is ``-dP/dT`` per year, ``rho`` is ``dP/dr``,
    and each model parameter ``p`` gives ``d_p = dP/dp`` (Heston ``d_v0`` is the variance vega).

    Returns:
        ``price, delta, gamma, theta, rho`` and ``d_<param>`` per model parameter.

    Shape:
        All inputs broadcast; every output has the broadcast shape.

    Examples:
        >>> g = greeks(load_surrogate(), spot=100.0, strike=100.0, maturity=1.0, v0=0.04,
        ...            kappa=1.5, theta=0.04, sigma=0.3, rho=-0.7)
        >>> 0.5 < float(g["delta"]) < 0.7 and float(g["gamma"]) > 0
        True
    """
    inputs = {"spot": spot, "maturity": maturity, "rate": rate, **params}
    tensors = _tensors({**inputs, "strike": strike, "dividend": dividend}, net.in_mean.device)
    # a tensor made inside an inference_mode block is one autograd refuses to save ("Inference
    # tensors cannot be saved for backward"): an ordinary copy of each goes into the graph
    tensors = {n: ordinary(t) for n, t in tensors.items()}
    is_call = ordinary(is_call)
    shape = broadcast_named({**tensors, "is_call": call_flags(is_call)}, "surrogate input")
    # one leaf per option, so that each gradient entry is that option's own sensitivity
    leaves = {n: tensors[n].expand(shape).clone().requires_grad_() for n in inputs}
    given = [*inputs.values(), strike, dividend]  # leaves are float64 copies of these
    market = dict(spot=leaves["spot"], strike=strike, maturity=leaves["maturity"],
                  rate=leaves["rate"], dividend=dividend)  # fmt: skip
    with torch.no_grad():
        value = _price(net, market, is_call, "raise", {n: leaves[n] for n in params}, given)
    with torch.enable_grad():
        smooth = _smooth_price(net, tensors["strike"], tensors["dividend"], is_call, leaves,
                               given)  # fmt: skip
        names = list(leaves)
        grads = torch.autograd.grad(smooth.sum(), [leaves[n] for n in names], create_graph=True)
        first = dict(zip(names, grads, strict=True))
        (gamma,) = torch.autograd.grad(first["spot"].sum(), leaves["spot"])
    out = {
        "price": value.detach(),
        "delta": first["spot"].detach(),
        "gamma": gamma,
        "theta": -first["maturity"].detach(),
        "rho": first["rate"].detach(),
    }
    out.update({f"d_{n}": first[n].detach() for n in params})
    return out
