"""Heston calibration network: the inverse map from an implied-vol surface to parameters.

A network reads the implied vols of a surface on a fixed grid (6 maturities x 11 strikes, the
grid of the surrogate's benchmark) and returns the Heston parameters in one forward pass
(Hernandez 2017). It is trained through :class:`qfnet.training.Trainer` on surfaces labelled by
the exact pricer at Sobol-sampled parameters, with an MSE loss on box-normalised parameters;
its outputs are mapped into the parameter box by a sigmoid, so every answer is admissible.

Rebuild the shipped network (``data/networks/heston_calibration/``)::

    python -m qfnet.calibration_network --out data/networks/heston_calibration/network.pt

References:
    Hernandez, A. (2017), "Model calibration with neural networks", Risk, June 2017.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pricing._calibration_batch import sorted_groups
from pricing._validation import check_positive_int
from pricing.heston import otm_implied_vol
from pricing.quotes import DECIMAL_LIMITS
from qfnet._paths import data_dir, missing_hint
from qfnet.nets import MLP
from qfnet.training import EarlyStopping, Trainer, TrainerConfig
from qfnet.training.checkpoint import (
    ModelFileError,
    damage_summary,
    load_verified,
    save_atomically,
)

__all__ = [
    "BOX",
    "GRID_LOG_MONEYNESS",
    "GRID_MATURITY",
    "NAMES",
    "CalibrationNetwork",
    "accuracy",
    "default_path",
    "grid_surfaces",
    "load_network",
    "make_dataset",
    "predict",
    "sample_parameters",
    "save_network",
    "surface_from_quotes",
    "surface_vols",
    "train_network",
]

NAMES = ("v0", "kappa", "theta", "sigma", "rho")
BOX: dict[str, tuple[float, float]] = {
    "v0": (0.01, 0.25),
    "kappa": (0.5, 5.0),
    "theta": (0.01, 0.25),
    "sigma": (0.1, 1.0),
    "rho": (-0.95, 0.0),
}
MATURITIES = (30 / 365, 0.25, 0.5, 1.0, 2.0, 3.0)
Z = tuple(np.linspace(-2.5, 2.5, 11).tolist())
_Z_SCALE = 0.2
N_POINTS = len(MATURITIES) * len(Z)
GRID_MATURITY = torch.tensor(MATURITIES, dtype=torch.float64).repeat_interleave(len(Z))
GRID_LOG_MONEYNESS = (
    torch.tensor(Z, dtype=torch.float64)
    * _Z_SCALE
    * torch.sqrt(torch.tensor(MATURITIES, dtype=torch.float64)[:, None])
).reshape(-1)  # (66,), maturity-major
_GRID_LOG_MONEYNESS = f"z*{_Z_SCALE}*sqrt(T)"
_FORMAT = "qfnet.heston_calibration_network/1"


def default_path() -> Path:
    """Path of the shipped network, ``data/networks/heston_calibration/network.pt`` (``data/``
    relocated by ``$QFNET_DATA``, see :mod:`qfnet._paths`).

    Examples:
        >>> default_path().name, default_path().is_file()
        ('network.pt', True)
    """
    return data_dir() / "networks" / "heston_calibration" / "network.pt"


def _box_tensors(box: Mapping[str, Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    lower = torch.tensor([float(box[n][0]) for n in NAMES], dtype=torch.float64)
    upper = torch.tensor([float(box[n][1]) for n in NAMES], dtype=torch.float64)
    return lower, upper


def sample_parameters(n: int, *, seed: int = 0) -> torch.Tensor:
    """Scrambled-Sobol parameter sets filling :data:`BOX`, columns in :data:`NAMES` order.

    Shape:
        output: ``(n, 5)``.

    Examples:
        >>> sample_parameters(4, seed=1).shape
        torch.Size([4, 5])
    """
    check_positive_int("n", n)  # 0 was a torch size error
    lower, upper = _box_tensors(BOX)
    engine = torch.quasirandom.SobolEngine(len(NAMES), scramble=True, seed=seed)
    return lower + (upper - lower) * engine.draw(n, dtype=torch.float64)


def surface_vols(params: torch.Tensor) -> torch.Tensor:
    """Exact Heston implied vols on the grid (forward 1, no discounting), NaN where unsolvable.

    Out-of-the-money options are priced (calls for ``k >= 0``, puts below).

    Shape:
        params: ``(P, 5)`` -> output ``(P, 66)``.

    Examples:
        >>> vols = surface_vols(torch.tensor([[0.04, 1.5, 0.04, 0.3, -0.5]], dtype=torch.float64))
        >>> vols.shape, bool(abs(vols[0, 5] - 0.2) < 0.01)  # short-dated ATM vol near sqrt(v0)
        (torch.Size([1, 66]), True)
    """
    if params.dim() != 2 or params.shape[1] != len(NAMES):  # a 6th column was ignored
        raise ValueError(f"params must have shape (P, {len(NAMES)}) ({', '.join(NAMES)}), "
                         f"got {tuple(params.shape)}")  # fmt: skip
    ratio = torch.exp(GRID_LOG_MONEYNESS)[None, :]  # (1, 66)
    fields = {name: params[:, i : i + 1] for i, name in enumerate(NAMES)}  # (P, 1) each
    return otm_implied_vol(ratio=ratio, maturity=GRID_MATURITY[None, :], **fields)


def make_dataset(n: int, *, seed: int = 0, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``n`` parameter sets, label their surfaces, and drop surfaces with a NaN vol.

    Shape:
        output: params ``(n', 5)``, vols ``(n', 66)`` with ``n' <= n``.

    Examples:
        >>> params, vols = make_dataset(8, seed=0)
        >>> params.shape[1], vols.shape[1], bool(torch.isfinite(vols).all())
        (5, 66, True)
    """
    params = sample_parameters(n, seed=seed)
    vols = torch.cat([surface_vols(p) for p in params.split(chunk)])
    keep = torch.isfinite(vols).all(dim=1) & (vols > 0).all(dim=1)
    return params[keep], vols[keep]


class CalibrationNetwork(nn.Module):
    """``vols (B, 66) -> unit-box parameters (B, 5)``: standardised inputs, an MLP, a sigmoid.

    Map the output to parameters with :meth:`to_params` (``lower + (upper - lower) * u``).

    Shape:
        - input: ``(B, 66)``
        - output: ``(B, 5)`` in ``(0, 1)``

    Examples:
        >>> net = CalibrationNetwork(hidden=(8,))
        >>> net(torch.full((2, 66), 0.2, dtype=torch.float64)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        *,
        hidden: Sequence[int] = (128, 128, 128, 128),
        activation: str = "silu",
        box: Mapping[str, Sequence[float]] = BOX,
    ) -> None:
        super().__init__()
        self.hidden, self.activation = tuple(int(h) for h in hidden), activation
        self.body = MLP(N_POINTS, len(NAMES), hidden=self.hidden, activation=activation).double()
        lower, upper = _box_tensors(box)
        self.register_buffer("lower", lower)
        self.register_buffer("upper", upper)
        self.register_buffer("input_mean", torch.full((N_POINTS,), 0.3, dtype=torch.float64))
        self.register_buffer("input_std", torch.full((N_POINTS,), 0.1, dtype=torch.float64))

    def fit_scaler(self, vols: torch.Tensor) -> None:
        """Set the input standardisation from training surfaces ``(N, 66)``."""
        self.input_mean.copy_(vols.mean(dim=0))
        self.input_std.copy_(vols.std(dim=0).clamp(min=1e-6))

    def forward(self, vols: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body((vols - self.input_mean) / self.input_std))

    def to_unit(self, params: torch.Tensor) -> torch.Tensor:
        """Parameters ``(B, 5)`` -> unit box."""
        return (params - self.lower) / (self.upper - self.lower)

    def to_params(self, unit: torch.Tensor) -> torch.Tensor:
        """Unit box ``(B, 5)`` -> parameters."""
        return self.lower + (self.upper - self.lower) * unit


def train_network(
    params: torch.Tensor,
    vols: torch.Tensor,
    *,
    hidden: Sequence[int] = (128, 128, 128, 128),
    activation: str = "silu",
    max_epochs: int = 100,
    batch_size: int = 256,
    lr: float = 2e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> CalibrationNetwork:
    """Train a :class:`CalibrationNetwork` on ``(params, vols)`` through the shared Trainer.

    The loss is the MSE on box-normalised parameters; a ``val_fraction`` of the data (the last
    rows) drives early stopping and a one-cycle learning-rate schedule sets the step size.
    ``seed`` fixes the initial weights and the batch order: the same seed, the same network.
    ``resume=True`` continues an interrupted run from the checkpoints of ``run_dir`` (same data
    and settings: the same network as one run through).

    Args:
        run_dir: Where the run goes, as every qfnet run (``config.json``, ``metrics.csv``,
            TensorBoard events, ``checkpoints/{last,best}.pt``, ``loss.png``) and, at the end,
            ``model.pt``: the network file of :func:`save_network` (``None``: nothing written;
            a new run removes the replaced run's when it starts). A run directory had neither
            the events nor a network to load.

    Shape:
        params: ``(N, 5)``, vols ``(N, 66)``.

    Raises:
        ValueError: mismatched shapes, a parameter outside :data:`BOX`, a bad vol, a
            ``val_fraction`` outside ``(0, 1)``, or fewer than 2 surfaces left for training.

    Examples:
        >>> p, v = make_dataset(64, seed=0)
        >>> net = train_network(p, v, hidden=(8,), max_epochs=1)
        >>> predict(net, v[:2])["rho"].shape
        torch.Size([2])
    """
    params, vols = _check_training_data(params, vols)
    # early stopping needs a validation set: 0 or a negative value held out one surface anyway
    if isinstance(val_fraction, bool) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed only
        torch.manual_seed(seed)
        net = CalibrationNetwork(hidden=hidden, activation=activation)
    n_val = max(1, int(len(params) * val_fraction))
    if len(params) - n_val < 2:  # the scaler's std of one surface is NaN: a NaN loss
        raise ValueError(f"params, vols: {len(params)} surfaces leave {len(params) - n_val} for "
                         f"training after val_fraction={val_fraction} (at least 2)")  # fmt: skip
    net.fit_scaler(vols[:-n_val])
    target = net.to_unit(params)
    train = torch.utils.data.TensorDataset(vols[:-n_val], target[:-n_val])
    val = torch.utils.data.TensorDataset(vols[-n_val:], target[-n_val:])
    config = TrainerConfig(max_epochs=max_epochs, batch_size=batch_size, optimizer="adam", lr=lr,
                           scheduler="onecycle", seed=seed, run_dir=run_dir, device="cpu",
                           progress_bar=False)  # fmt: skip
    early = EarlyStopping(monitor="val_loss", patience=max(5, max_epochs // 5),
                          restore_best_weights=True)  # fmt: skip
    trainer = Trainer(net, loss=nn.functional.mse_loss, config=config, callbacks=[early])
    if run_dir is not None and not resume:
        # a new run replaces the network as the Trainer its checkpoints and loss.png: a new run
        # interrupted left the replaced run's model.pt beside its own metrics
        (Path(run_dir) / "model.pt").unlink(missing_ok=True)
    # without resume a new run removes the checkpoints it finds: an interrupted run was lost
    history = trainer.fit(train, val, resume=resume)
    net.eval()
    if run_dir is not None and trainer.is_global_zero:
        save_network(net, Path(run_dir) / "model.pt",
                     training={"n": len(params), "epochs": len(history), "seed": seed})  # fmt: skip
    return net


def _check_training_data(
    params: torch.Tensor, vols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training data as float64 tensors ``(N, 5)``, ``(N, 66)``, parameters inside :data:`BOX`
    (the sigmoid cannot reach a target outside it: such data trained without a word; a
    mismatched count was torch's "Size mismatch between tensors", numpy a TypeError)."""
    vols = _check_surfaces(vols)
    params = torch.as_tensor(params, dtype=torch.float64)
    if tuple(params.shape) != (len(vols), len(NAMES)):
        raise ValueError(f"params: expected shape ({len(vols)}, {len(NAMES)}) ({', '.join(NAMES)}) "
                         f"for {len(vols)} surfaces, got {tuple(params.shape)}")  # fmt: skip
    lower, upper = _box_tensors(BOX)
    outside = ~((params >= lower) & (params <= upper))  # NaN too
    if outside.any():
        row, col = (int(i) for i in outside.nonzero()[0])
        raise ValueError(f"params: row {row}, {NAMES[col]} {float(params[row, col])} is outside "
                         f"the network's box {list(BOX[NAMES[col]])}")  # fmt: skip
    return params, vols


def _check_surfaces(vols: torch.Tensor) -> torch.Tensor:
    vols = torch.as_tensor(vols, dtype=torch.float64)
    if vols.ndim == 1:
        vols = vols.unsqueeze(0)
    if vols.ndim != 2 or vols.shape[1] != N_POINTS:
        raise ValueError(
            f"vols: expected surfaces of shape (B, {N_POINTS}) (6 maturities x 11 strikes), "
            f"got {tuple(vols.shape)}"
        )
    bad = ~torch.isfinite(vols) | (vols <= 0)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"vols: surface {row}, grid point {col} (maturity {MATURITIES[col // len(Z)]:.4g}, "
            f"z {Z[col % len(Z)]:.2f}) is {float(vols[row, col])}; vols must be finite and > 0"
        )
    return vols


def predict(net: CalibrationNetwork, vols: torch.Tensor) -> dict[str, torch.Tensor]:
    """Heston parameters of a batch of surfaces in one forward pass.

    Shape:
        vols: ``(B, 66)`` (or ``(66,)``) -> each parameter ``(B,)``.

    Raises:
        ValueError: wrong surface width, or a NaN / non-positive vol (named by surface and point).

    Examples:
        >>> net = CalibrationNetwork(hidden=(8,))
        >>> sorted(predict(net, torch.full((3, 66), 0.2)).keys())
        ['kappa', 'rho', 'sigma', 'theta', 'v0']
    """
    vols = _check_surfaces(vols)
    with torch.no_grad():
        params = net.to_params(net(vols))
    return {name: params[:, i] for i, name in enumerate(NAMES)}


def save_network(net: CalibrationNetwork, path: str | Path, **info: Any) -> None:
    """Write the network as ``{"state_dict", "metadata"}`` (metadata is plain JSON), readable
    with ``torch.load(weights_only=True)``; ``info`` (e.g. accuracy) is stored in the metadata.

    Raises:
        ValueError: an ``info`` key is one of the fields written here (``grid``, ``box``, ...).

    Examples:
        >>> import tempfile
        >>> net = CalibrationNetwork(hidden=(8,))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     save_network(net, f"{tmp}/n.pt", note="example")
        ...     again = load_network(f"{tmp}/n.pt")
        >>> surface = torch.full((1, 66), 0.2, dtype=torch.float64)
        >>> predict(again, surface)["v0"].tolist() == predict(net, surface)["v0"].tolist()
        True
    """
    metadata = {
        "format": _FORMAT,
        "names": list(NAMES),
        "box": {
            n: [float(lo), float(hi)] for n, lo, hi in zip(NAMES, net.lower, net.upper, strict=True)
        },
        "grid": {
            "maturities": list(MATURITIES),
            "z": list(Z),
            "log_moneyness": _GRID_LOG_MONEYNESS,
            "order": "maturity-major",
            "vols": "Black implied vols, forward 1",
        },
        "architecture": {
            "hidden": list(net.hidden),
            "activation": net.activation,
            "output": "sigmoid to box",
        },
        "scaler": {"mean": net.input_mean.tolist(), "std": net.input_std.tolist()},
    }
    taken = sorted(set(info) & set(metadata))
    if taken:  # it replaced the field: a file load_network calls damaged, or whose box lies
        raise ValueError(f"info: {taken} are fields save_network writes; name them otherwise")
    metadata.update(info)
    # a killed plain torch.save left half a file where the shipped network was
    save_atomically({"state_dict": net.state_dict(), "metadata": json.dumps(metadata)}, path)


def load_network(path: str | Path | None = None) -> CalibrationNetwork:
    """Load a network written by :func:`save_network` (default: the shipped one).

    Raises:
        FileNotFoundError: no such file.
        qfnet.training.checkpoint.ModelFileError: (a ValueError) the file is not a Heston
            calibration network, or is damaged (cut, a damaged byte, a missing or malformed
            field, another grid), or is a directory: the message names the file and the field.

    Examples:
        >>> net = load_network()
        >>> net.hidden
        (128, 128, 128, 128)
    """
    path = Path(path) if path is not None else default_path()
    if not path.exists():  # a directory goes on: load_verified names it as one
        hint = f" ({missing_hint()})" if path == default_path() else ""
        raise FileNotFoundError(f"no calibration network at {path}{hint}")
    # a cut or foreign file raised torch's RuntimeError, KeyError or JSONDecodeError, naming no
    # file; a damaged byte in a weight loaded without a word
    payload = load_verified(path, "calibration network")
    metadata = _network_metadata(payload, path)
    try:
        arch = metadata["architecture"]
        net = CalibrationNetwork(hidden=arch["hidden"], activation=arch["activation"],
                                 box=metadata["box"])  # fmt: skip
        net.load_state_dict(payload["state_dict"])
        _check_loaded(net, metadata["box"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = f"{path} is a damaged Heston calibration network: {damage_summary(exc)}"
        raise ModelFileError(path, reason) from exc
    net.metadata = metadata
    return net.eval()


def _network_metadata(payload: Any, path: Path) -> dict[str, Any]:
    """The metadata of a loaded network file, checked against this module's input grid."""

    def damaged(reason: str) -> ModelFileError:
        return ModelFileError(path, f"{path}: {reason}")

    if not (isinstance(payload, dict) and isinstance(payload.get("metadata"), str)):
        raise damaged("not a Heston calibration network (no 'metadata' field)")
    try:
        metadata = json.loads(payload["metadata"])
    except json.JSONDecodeError as exc:
        raise damaged(f"field 'metadata' is not valid JSON ({exc.msg})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != _FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise damaged(f"not a Heston calibration network (format {found!r}, this qfnet reads "
                      f"{_FORMAT!r})")  # fmt: skip
    # a network of another grid or parameter order would read this grid's vols as its own
    if metadata.get("names") != list(NAMES):
        raise damaged(f"field 'names' is {metadata.get('names')!r}, not {list(NAMES)}")
    grid = metadata.get("grid")
    expected = {"maturities": list(MATURITIES), "z": list(Z), "order": "maturity-major",
                "log_moneyness": _GRID_LOG_MONEYNESS}  # fmt: skip
    if not (isinstance(grid, dict) and all(grid.get(k) == v for k, v in expected.items())):
        raise damaged(f"field 'grid' is not this qfnet's grid (maturities "
                      f"{[round(t, 4) for t in MATURITIES]}, z {Z[0]} .. {Z[-1]} by "
                      f"{Z[1] - Z[0]}, log-moneyness {_GRID_LOG_MONEYNESS}, "
                      "maturity-major)")  # fmt: skip
    box = metadata.get("box")
    if not (isinstance(box, dict) and sorted(box) == sorted(NAMES)):
        found = sorted(box) if isinstance(box, dict) else box
        raise damaged(f"field 'box' must bound exactly {list(NAMES)}, got {found!r}")
    for name in NAMES:  # an inverted or NaN pair loaded without a word
        pair = box[name]
        if not (isinstance(pair, list) and len(pair) == 2 and _finite_below(*pair)):
            raise damaged(f"field 'box' {name!r} must be [low, high], finite numbers with "
                          f"low < high, got {pair!r}")  # fmt: skip
    return metadata


def _finite_below(low: Any, high: Any) -> bool:
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high))
    return numbers and math.isfinite(low) and math.isfinite(high) and low < high


def _check_loaded(net: CalibrationNetwork, box: Mapping[str, Sequence[float]]) -> None:
    """The loaded bounds and input scaler (``to_params`` and ``forward`` use the state_dict's
    buffers, not the metadata): the box the file names, finite scales > 0 (NaN parameters
    otherwise)."""
    lower, upper = _box_tensors(box)
    if not (torch.equal(net.lower, lower) and torch.equal(net.upper, upper)):
        raise ValueError(f"field 'box' is not the weights' bounds (state_dict lower "
                         f"{net.lower.tolist()}, upper {net.upper.tolist()})")  # fmt: skip
    mean, std = net.input_mean, net.input_std
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0.0).all()):
        raise ValueError("state_dict 'input_mean' and 'input_std' must be finite, the std > 0")


def surface_from_quotes(quotes: pd.DataFrame) -> torch.Tensor:
    """Interpolate a quote table onto the network's grid.

    Columns ``forward, maturity, strike`` and ``market_iv`` (as in a prepared table) or
    ``implied_vol``. Per expiry the smile is linear in log-moneyness ``ln(K/F)`` and flat beyond
    the quotes (quotes at one strike, such as a call and a put, count as their mean vol); across
    expiries total variance is linear in maturity at fixed log-moneyness, and the vol is flat
    before the first and after the last expiry.

    Shape:
        output: ``(66,)``, maturity-major.

    Examples:
        >>> table = pd.DataFrame({"strike": [90.0, 100.0, 110.0] * 2, "forward": 100.0,
        ...                       "maturity": [0.5] * 3 + [1.0] * 3, "implied_vol": 0.2})
        >>> surface = surface_from_quotes(table)
        >>> surface.shape, bool(torch.allclose(surface, torch.tensor(0.2, dtype=torch.float64)))
        (torch.Size([66]), True)
    """
    surfaces, errors = grid_surfaces([quotes])
    if errors[0] is not None:
        raise ValueError(errors[0])
    return surfaces[0]


_GRID_K = (np.asarray(Z) * _Z_SCALE)[None, :] * np.sqrt(MATURITIES)[:, None]  # (6, 11)


def grid_surfaces(tables: Sequence[pd.DataFrame]) -> tuple[torch.Tensor, list[str | None]]:
    """:func:`surface_from_quotes` of many tables at once (per-table Python work cost more than
    the interpolation): the surfaces, NaN where a table cannot be put on the grid, and per table
    None or the reason it cannot (the message :func:`surface_from_quotes` raises).

    Shape:
        S tables -> surfaces ``(S, 66)``, reasons: S entries.

    Examples:
        >>> table = pd.DataFrame({"strike": [90.0, 110.0], "forward": 100.0, "maturity": 1.0,
        ...                       "market_iv": [0.25, 0.2]})
        >>> surfaces, errors = grid_surfaces([table, table.drop(columns="forward")])
        >>> tuple(surfaces.shape), bool(surfaces[1].isnan().all()), errors[1]
        ((2, 66), True, "quotes: missing column(s) ['forward'] (need market_iv or implied_vol)")
    """
    columns = ["market_iv" if "market_iv" in t else "implied_vol" for t in tables]
    errors = [_missing_columns(t, c) for t, c in zip(tables, columns, strict=True)]
    ok = [i for i, e in enumerate(errors) if e is None]
    out = np.full((len(tables), N_POINTS), np.nan)
    if not ok:
        return torch.tensor(out, dtype=torch.float64), errors
    try:
        if len(ok) > 1 and not all(tables[i].columns.is_unique for i in ok):
            raise ValueError("a repeated column name (pd.concat cannot align the tables)")
        values = _stacked_values([tables[i] for i in ok], [columns[i] for i in ok])
    except (TypeError, ValueError) as error:  # a column that is not numbers, say
        if len(ok) == 1:
            errors[ok[0]] = f"quotes: {error}"
        else:  # one table at a time, so that each message belongs to its table
            for i in ok:
                one, (errors[i],) = grid_surfaces([tables[i]])
                out[i] = one[0].numpy()
    else:
        _grid_checked(values, ok, tables, columns, out, errors)
    return torch.tensor(out, dtype=torch.float64), errors


def _stacked_values(
    chosen: list[pd.DataFrame], columns: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward, maturity, strike and vol of all rows of ``chosen`` (vol from each table's
    ``columns`` entry) and each row's table, ``(R,)`` each."""
    quotes = chosen[0] if len(chosen) == 1 else pd.concat(chosen, ignore_index=True)
    table = np.repeat(np.arange(len(chosen)), [len(t) for t in chosen])
    forward, maturity, strike = (quotes[c].to_numpy(dtype=float)
                                 for c in ("forward", "maturity", "strike"))  # fmt: skip
    return forward, maturity, strike, _vol_column(quotes, columns, table), table


def _grid_checked(
    values: tuple[np.ndarray, ...],
    ok: list[int],
    tables: Sequence[pd.DataFrame],
    columns: list[str],
    out: np.ndarray,
    errors: list[str | None],
) -> None:
    """Grid vols of the tables ``ok`` from their stacked ``values`` into ``out`` ``(S, 66)``,
    the reason in ``errors`` for those with a bad value."""
    forward, maturity, strike, vol, table = values
    bad = ~_positive_values(forward, maturity, strike, vol).all(axis=0)
    for row in np.unique(table[bad]):  # tables with a bad value: name it as one table would
        errors[ok[row]] = _bad_value(tables[ok[row]], columns[ok[row]])
    good = np.array([errors[i] is None for i in ok])
    if good.any():
        keep = good[table]
        sizes = np.bincount(table, minlength=len(ok))
        rows = _grid_vols(np.log(strike[keep] / forward[keep]), maturity[keep].round(10),
                          vol[keep], np.repeat(np.arange(good.sum()), sizes[good]))  # fmt: skip
        out[np.asarray(ok)[good]] = rows.reshape(len(rows), -1)


def _missing_columns(quotes: pd.DataFrame, column: str) -> str | None:
    """The error of a table without the needed columns or rows, else None."""
    missing = [c for c in ("forward", "maturity", "strike", column) if c not in quotes]
    if missing:
        return f"quotes: missing column(s) {missing} (need market_iv or implied_vol)"
    return "quotes: the table is empty" if not len(quotes) else None


def _vol_column(quotes: pd.DataFrame, columns: list[str], table: np.ndarray) -> np.ndarray:
    """Each row's vol from its table's column (``market_iv``, else ``implied_vol``), ``(R,)``."""
    market = np.array([c == "market_iv" for c in columns])
    if market.all() or not market.any():
        return quotes[columns[0]].to_numpy(dtype=float)
    return np.where(market[table], quotes["market_iv"].to_numpy(dtype=float),
                    quotes["implied_vol"].to_numpy(dtype=float))  # fmt: skip


def _positive_values(*values: np.ndarray) -> np.ndarray:
    """Forward, maturity, strike positive and finite and the vol (last) too, in decimals;
    ``(4, R)`` (a maturity <= 0 and vols in percent were taken; inf passed "> 0")."""
    with np.errstate(invalid="ignore"):
        ok = np.stack([np.isfinite(v) & (v > 0) for v in values])
        ok[-1] &= values[-1] <= DECIMAL_LIMITS["implied_vol"]
    return ok


def _bad_value(quotes: pd.DataFrame, column: str) -> str:
    """The error naming the first bad value of a table that :func:`_positive_values` refuses."""
    names = ("forward", "maturity", "strike", column)
    ok = _positive_values(*(quotes[c].to_numpy(dtype=float) for c in names))
    name, row = next((n, r) for n, r in zip(names, ok, strict=True) if not r.all())
    i = int(np.argmax(~row))
    decimals = " in decimals (at most 5)" if name == column else ""
    return (f"quotes: row {quotes.index[i]}, column {name!r}: {float(quotes[name].iloc[i])} is "
            f"not a positive finite number{decimals}")  # fmt: skip


def _grid_vols(x: np.ndarray, key: np.ndarray, vol: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Grid vols ``(S, 6, 11)`` of checked quotes: log-moneyness ``x``, rounded maturity ``key``,
    ``vol`` and table ``table`` per quote ``(R,)`` (tables 0..S-1, each with quotes)."""
    x_s, key_s, vol_s, table_s = _merged_strikes(x, key, vol, table)
    n_tables = int(table.max()) + 1
    # each sorted quote's smile (table, expiry) and place in it; each table's first smile
    group, slot, starts, first = sorted_groups(table_s, key_s, n_tables)
    lengths = np.diff(np.append(starts, len(x_s)))
    xs = np.full((len(starts), max(lengths.max(), 2)), np.inf)  # (G, L >= 2), sorted, inf-padded
    vs = np.zeros_like(xs)
    xs[group, slot], vs[group, slot] = x_s, vol_s
    expiry, owner = key_s[starts], table_s[starts]  # (G,)
    count = np.bincount(owner, minlength=n_tables)
    padded = np.full((n_tables, count.max()), np.inf)
    padded[owner, np.arange(len(owner)) - first[owner]] = expiry
    below, above = _grid_neighbours(padded, count)
    g1, g2 = first[:, None] + below, first[:, None] + above  # (S, 6) smiles
    v1, v2 = _smiles_at(xs, vs, lengths, g1), _smiles_at(xs, vs, lengths, g2)  # (S, 6, 11)
    t1, t2, t = expiry[g1][..., None], expiry[g2][..., None], np.asarray(MATURITIES)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # flat rows divide by t2 - t1 = 0
        w1, w2 = v1**2 * t1, v2**2 * t2
        between = np.sqrt((w1 + (w2 - w1) * (t - t1) / (t2 - t1)) / t)
    return np.where((g1 == g2)[..., None], v1, between)


def _merged_strikes(
    x: np.ndarray, key: np.ndarray, vol: np.ndarray, table: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quotes ``(R,)`` sorted by table, expiry and log-moneyness, those at one ``x`` of a smile
    (a call and a put at one strike) merged into their mean vol, ``(R',)`` each. The smile took
    the first of them left of the strike and the last right of it: with calls 50 bp above puts,
    grid vols 100 bp apart and kappa 1.34 or 1.66 (true 1.5) by row order."""
    order = np.lexsort((x, key, table))  # by table, expiry, then log-moneyness
    x, key, vol, table = x[order], key[order], vol[order], table[order]
    new = np.ones(len(x), dtype=bool)
    new[1:] = (x[1:] != x[:-1]) | (key[1:] != key[:-1]) | (table[1:] != table[:-1])
    point = np.cumsum(new) - 1
    mean = np.bincount(point, weights=vol) / np.bincount(point)
    return x[new], key[new], mean, table[new]


def _grid_neighbours(expiries: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The expiries the grid reads at each of its maturities, for tables of ``count`` ``(S,)``
    increasing ``expiries`` each ``(S, E)`` (inf past ``count``): positions ``(S, 6)`` of the
    expiry before and of the one at or after (total variance is interpolated between them),
    both the nearest beyond the first or last expiry (the vol is flat there), and both the expiry
    at the grid maturity where one is (its vol alone: the expiry before it, read with weight 0,
    was named by the strike warning, and a 30-day expiry, rounded to 10 digits below 30/365,
    was mixed with the next). ``expiries`` are rounded to 10 digits, as the grid's here.
    """
    grid = np.round(MATURITIES, 10)[:, None]  # (6, 1)
    before = (expiries[:, None, :] < grid).sum(-1)  # (S, 6)
    last = count[:, None] - 1
    above = np.minimum(before, last)
    at = np.take_along_axis(expiries, above, -1) == grid.T  # (S, 6)
    return np.where(at, above, np.clip(before - 1, 0, last)), above


def _smiles_at(xs: np.ndarray, vs: np.ndarray, lengths: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Smile ``g`` ``(S, 6)`` at the grid's log-moneyness of each grid maturity, ``(S, 6, 11)``:
    ``np.interp`` (linear, flat beyond the quotes) of each smile's sorted, padded quotes
    ``xs, vs`` ``(G, L)`` of distinct strikes, with ``lengths`` ``(G,)``."""
    x, v, n = xs[g], vs[g], lengths[g][..., None]  # (S, 6, L), (S, 6, 1)
    k = np.broadcast_to(_GRID_K, g.shape + _GRID_K.shape[-1:])  # (S, 6, 11)
    below = (x[..., None, :] <= k[..., None]).sum(-1)  # quotes at or left of k
    j = np.minimum(np.maximum(below - 1, 0), np.maximum(n - 2, 0))
    x0, x1 = np.take_along_axis(x, j, -1), np.take_along_axis(x, j + 1, -1)
    y0, y1 = np.take_along_axis(v, j, -1), np.take_along_axis(v, j + 1, -1)
    with np.errstate(divide="ignore", invalid="ignore"):  # x1 = inf or x0, where not used
        inside = (y1 - y0) / (x1 - x0) * (k - x0) + y0
    inside = np.where(k == x0, y0, inside)  # np.interp's value at a quote
    first, final = v[..., :1], np.take_along_axis(v, n - 1, -1)
    return np.where(below == 0, first, np.where(below >= n, final, inside))


def accuracy(net: CalibrationNetwork, params: torch.Tensor, vols: torch.Tensor) -> dict[str, Any]:
    """Fractions of surfaces whose parameters are within 5% of the truth (relative: the issue's
    criterion; all five and per name) and within 5% of the box width (``*_range``).

    Shape:
        params: ``(N, 5)``, vols ``(N, 66)``.

    Examples:
        >>> params, vols = make_dataset(4, seed=1)
        >>> scores = accuracy(load_network(), params, vols)
        >>> 0.0 <= scores["all_within_5pct"] <= 1.0, sorted(scores)[:2]
        (True, ['all_within_5pct', 'all_within_5pct_range'])
    """
    predicted = torch.stack(list(predict(net, vols).values()), dim=1)
    error = (predicted - params).abs()
    relative = (error <= 0.05 * params.abs()).double()
    ranged = (error <= 0.05 * (net.upper - net.lower)).double()
    scores = {"all_within_5pct": float(relative.all(dim=1).double().mean()),
              "all_within_5pct_range": float(ranged.all(dim=1).double().mean())}  # fmt: skip
    for i, name in enumerate(NAMES):
        scores[f"{name}_within_5pct"] = float(relative[:, i].mean())
    return scores


def _positive_int(text: str) -> int:
    """An argparse type: a positive integer (the parser names the option and the value)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive layer widths, ``"128,128"``
    (:func:`qfnet._cli.parse_widths`, as ``qfnet train surrogate --hidden`` reads them)."""
    from qfnet._cli import parse_widths  # typer: only for the command

    try:
        return parse_widths(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"must be {error}") from None


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train and save the Heston calibration network.")
    parser.add_argument(
        "--out",
        default=str(default_path()),
        help="network file to write (default: the shipped one, replaced)",
    )
    count = _positive_int  # a 0 epochs, batch or width failed after the data (70 s at the defaults)
    parser.add_argument("--n", type=count, default=60_000, help="synthetic surfaces to train on")
    parser.add_argument("--epochs", type=count, default=300, help="most epochs (early stopping)")
    parser.add_argument("--hidden", type=_widths, default="128,128,128,128", help="hidden widths")
    parser.add_argument("--batch", type=count, default=512, help="batch size")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data, the weights and the batch order (test data: +1000)",
    )
    parser.add_argument("--threads", type=count, default=1, help="torch threads")
    parser.add_argument("--run-dir", default=None, help="checkpoints, metrics (for --resume)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    args = parser.parse_args(argv)
    if args.resume and args.run_dir is None:
        parser.error("--resume needs --run-dir (the run to continue)")
    torch.set_num_threads(args.threads)
    params, vols = make_dataset(args.n, seed=args.seed)
    net = train_network(params, vols, hidden=args.hidden, max_epochs=args.epochs,
                        batch_size=args.batch, seed=args.seed, run_dir=args.run_dir,
                        resume=args.resume)  # fmt: skip
    test_params, test_vols = make_dataset(2000, seed=args.seed + 1000)
    scores = accuracy(net, test_params, test_vols)
    save_network(net, args.out, training={"n": len(params), "epochs": args.epochs,
                                          "batch": args.batch, "seed": args.seed}, test=scores)  # fmt: skip
    print(json.dumps(scores))


if __name__ == "__main__":
    _main()
