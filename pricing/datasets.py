"""Training data for surrogate pricers: domains, Sobol sampling, labelling, Parquet shards.

A dataset is a directory of Parquet shards ``shard-00000.parquet, ...`` plus ``metadata.json``
(generator, domain, engine, seed, sampling, shard layout, each shard's SHA-256, library versions).
Shard ``i`` holds the points ``[i * shard_size, (i + 1) * shard_size)`` of one scrambled Sobol
sequence fixed by the seed, so every shard is a pure function of ``(seed, shard index, shard
size)``: the files are identical whether they were made by one process, ``K`` local processes or a
Dask cluster, and the concatenated dataset is the first ``n`` Sobol points whatever the shard size
(Monte Carlo labels excepted: their noise is seeded per shard).

Every point is forward-normalised (``forward = 1``, ``discount = 1``): the Black implied vol of a
Heston or SABR smile depends only on the log-moneyness ``k = ln(K / F)`` and the maturity (for SABR,
``alpha`` is quoted for ``F = 1``: the lognormal-equivalent level ``alpha * F**(beta - 1)``).
The strike coordinate is ``z`` with ``k = z * z_scale * sqrt(T)``. Labels are prices of the
out-of-the-money option (call for ``k >= 0``) and their Black implied vols.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pricing import _generation
from pricing._atomic import replace_atomically
from pricing._generation import ResumeMismatch
from pricing._labels import ENGINES, check_compile, label, unlabelled_reason
from pricing._typing import coarsest_eps
from pricing._validation import (
    check_device,
    check_positive_int,
    is_whole,
    outside_domain,
    read_json,
)
from pricing.calibration import MODEL_PARAMETERS

__all__ = [
    "ENGINES",
    "HESTON_DOMAIN",
    "NAMED_DOMAINS",
    "SABR_DOMAIN",
    "SABR_PDE_DOMAIN",
    "Domain",
    "DomainError",
    "ResumeMismatch",
    "check_device",
    "generate",
    "label",
    "load_dataset",
    "sample",
]

FORMAT = "qfnet-dataset"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
"""The ``format_version`` values of ``metadata.json`` that :func:`load_dataset` reads."""
DOMAIN_RTOL = 1e-9
SOBOL_MAX_POINTS = 2**30
"""Points of one scrambled Sobol sequence (scipy's engine, 30 bits): the most a dataset holds."""


class DomainError(ValueError):
    """A query lies outside a model domain; the message names the field, the row and the bounds.

    Examples:
        >>> HESTON_DOMAIN.check({"v0": 0.04, "kappa": 1.0, "theta": 0.04, "sigma": 0.5,
        ...     "rho": 0.5, "maturity": 1.0, "log_moneyness": 0.0})
        Traceback (most recent call last):
        ...
        pricing.datasets.DomainError: rho = 0.5 at index 0 is outside the heston surrogate domain ...
    """


@dataclass(frozen=True)
class Domain:
    """A box of model parameters, maturities and standardised strikes, inclusive at the edges.

    Attributes:
        model: ``"heston"`` or ``"sabr"``.
        params: ``(name, low, high)`` for each model parameter, in the model's canonical order,
            inside the range where the model's pricer takes it (``|rho| < 1``, ``kappa > 0``...).
        maturity: ``(low, high)`` in years.
        z: ``(low, high)`` of the standardised strike ``z = ln(K / F) / (z_scale * sqrt(T))``.
        z_scale: the reference volatility that standardises log-moneyness.
        rtol: relative tolerance of the edges (a point computed in floating point at an edge is
            inside); of at least 1 in size, so absolute for log-moneyness edges below 1.

    Examples:
        >>> HESTON_DOMAIN.bounds("rho")
        (-0.95, 0.0)
        >>> bool(HESTON_DOMAIN.contains({"v0": 0.04, "kappa": 1.0, "theta": 0.04, "sigma": 0.5,
        ...      "rho": -0.7, "maturity": 1.0, "log_moneyness": 0.1}).all())
        True
    """

    model: str
    params: tuple[tuple[str, float, float], ...]
    maturity: tuple[float, float]
    z: tuple[float, float] = (-2.5, 2.5)
    z_scale: float = 0.2
    rtol: float = DOMAIN_RTOL

    def __post_init__(self) -> None:
        for name, low, high in (*self.params, ("maturity", *self.maturity), ("z", *self.z)):
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"domain bounds for {name!r} must be finite with low <= high")
        if self.maturity[0] <= 0.0:
            raise ValueError("domain maturity lower bound must be > 0")
        if not (math.isfinite(self.z_scale) and self.z_scale > 0.0):  # NaN slipped past <= 0
            raise ValueError(f"domain z_scale must be finite and > 0, got {self.z_scale}")
        if not (math.isfinite(self.rtol) and self.rtol >= 0.0):
            raise ValueError(f"domain rtol must be finite and >= 0, got {self.rtol}")
        # the labellers need exactly the model's parameters (a Heston domain of v0 alone failed
        # with KeyError: 'kappa' when labelled; a "bs" domain had no labeller at all)
        expected = MODEL_PARAMETERS.get(self.model)
        if expected is None:
            raise ValueError(
                f"domain model must be one of {sorted(MODEL_PARAMETERS)}, got {self.model!r}"
            )
        # in that order: the surrogates read their base vol's parameters by position (a Heston
        # domain listing kappa first took kappa for v0: base vol 1.21 instead of 0.2)
        if self.param_names != tuple(expected):
            raise ValueError(f"a {self.model} domain bounds {list(expected)}, in that order, got "
                             f"{list(self.param_names)}")  # fmt: skip
        for name, low, high in self.params:  # rho in [-1.5, 0] was recorded as the domain (and
            # served by its surrogate) while only [-0.99, 0] was sampled; v0 < 0 failed mid-run
            interval = outside_domain(name, low, high)
            if interval is not None:
                raise ValueError(f"domain bounds for {name!r} must lie in {interval} (the "
                                 f"{self.model} pricer's range), got [{low:g}, {high:g}]")  # fmt: skip

    @property
    def param_names(self) -> tuple[str, ...]:
        """Model parameter names in canonical order."""
        return tuple(name for name, _, _ in self.params)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Columns of a query: the parameters, ``maturity`` and ``log_moneyness``."""
        return (*self.param_names, "maturity", "log_moneyness")

    def bounds(self, name: str) -> tuple[float, float]:
        """``(low, high)`` of a parameter, ``maturity`` or ``z``."""
        if name == "maturity":
            return self.maturity
        if name == "z":
            return self.z
        for pname, low, high in self.params:
            if pname == name:
                return (low, high)
        raise KeyError(f"{name!r} is not a field of the {self.model} domain")

    def holds(self, name: str, values: Any) -> np.ndarray:
        """Which of ``values`` (of one field, :meth:`bounds`' names) lie inside its bounds, to
        the domain's ``rtol`` (NaN: outside).

        Examples:
            >>> HESTON_DOMAIN.holds("rho", [-0.5, -1.5]).tolist()
            [True, False]
        """
        low, high = self.bounds(name)
        return _within(np.atleast_1d(np.asarray(values, dtype=np.float64)), low, high, self.rtol)

    def _outside(
        self, columns: Mapping[str, Any], inputs: Iterable[Any] | None = None
    ) -> Iterator[tuple[str, np.ndarray, str]]:
        """Yield ``(field, outside mask, bounds text)`` for each field of a query. Queries in a
        lower precision than float64 get edges as wide as their own rounding (an edge point
        given in float32 is 6e-8 off it)."""
        arrays = _broadcast_columns(columns, self.input_names)
        # the query's own fields: a DataFrame's .values is an array ("'numpy.ndarray' object is
        # not callable"), and a float32 column outside the query widened the edges
        given = [columns[name] for name in self.input_names] if inputs is None else inputs
        rtol = max(self.rtol, 4.0 * coarsest_eps(*given))
        for name in (*self.param_names, "maturity"):
            low, high = self.bounds(name)
            yield name, ~_within(arrays[name], low, high, rtol), f"[{low:g}, {high:g}]"
        tau = np.where(arrays["maturity"] > 0.0, arrays["maturity"], np.nan)
        half = self.z_scale * np.sqrt(tau)
        # the edges in log-moneyness, with the tolerance of a log: ln(K / F) from a strike and
        # a forward is off by their relative rounding in absolute terms (a float32 strike at
        # the edge, about 6e-8, was refused half the time where z's relative tolerance was less)
        low, high = self.z[0] * half, self.z[1] * half
        k = arrays["log_moneyness"]
        with np.errstate(invalid="ignore"):
            inside = (k >= low - rtol * np.maximum(np.abs(low), 1.0)) & (
                k <= high + rtol * np.maximum(np.abs(high), 1.0)
            )
        text = f"z_scale * sqrt(T) * [{self.z[0]:g}, {self.z[1]:g}]"
        yield "log_moneyness", ~inside, text

    def contains(
        self, columns: Mapping[str, Any], inputs: Iterable[Any] | None = None
    ) -> np.ndarray:
        """Boolean mask of the query rows inside the domain (NaN rows are outside).

        Args:
            columns: arrays or tensors named by :attr:`input_names` (broadcast together), as a
                dict or a DataFrame (other columns are ignored).
            inputs: the caller's original values, when ``columns`` are converted copies (their
                precision sets the edges' tolerance).
        """
        inside = None
        for _, outside, _ in self._outside(columns, inputs):
            inside = ~outside if inside is None else inside & ~outside
        return inside

    def check(self, columns: Mapping[str, Any], inputs: Iterable[Any] | None = None) -> None:
        """Raise :class:`DomainError` naming the first field and row outside the domain
        (``inputs`` as for :meth:`contains`)."""
        arrays = _broadcast_columns(columns, self.input_names)
        for name, outside, text in self._outside(columns, inputs):
            if outside.any():
                row = int(np.flatnonzero(outside)[0])
                if name == "log_moneyness":  # the bounds at this row's maturity, not only z's
                    text = self._moneyness_bounds(float(arrays["maturity"][row]))
                count = int(outside.sum())
                raise DomainError(
                    f"{name} = {float(arrays[name][row])!r} at index {row} is outside the "
                    f"{self.model} surrogate domain {text} ({count} "
                    f"{'row' if count == 1 else 'rows'} outside); the surrogate never extrapolates"
                )

    def _moneyness_bounds(self, maturity: float) -> str:
        """The log-moneyness interval at one maturity, and the rule that makes it (the rule
        alone, ``z_scale * sqrt(T) * [-2.5, 2.5]``, named neither ``z_scale`` nor the bounds)."""
        half = self.z_scale * math.sqrt(maturity) if maturity > 0 else math.nan
        low, high = self.z[0] * half, self.z[1] * half
        return (f"[{low:.4g}, {high:.4g}] at T = {maturity:g}, from {self.z_scale:g} * sqrt(T) * "
                f"[{self.z[0]:g}, {self.z[1]:g}]")  # fmt: skip

    def expanded(self, margin: float) -> Domain:
        """This domain widened by ``margin`` times each interval's width on both sides.

        Training on a slightly wider box keeps a surrogate accurate up to the edges of the
        domain it serves. Positive lower bounds shrink at most to half their value, correlations
        stay within ``[-0.99, 0.99]`` (``beta`` within ``[0, 1]``, ``v0`` and ``nu`` at least 0)
        unless the domain's own bounds reach further (it is never narrowed), and the maturity
        interval is widened in ``sqrt(T)``, the variable it is sampled in.

        Examples:
            >>> HESTON_DOMAIN.expanded(0.1).bounds("z")
            (-3.0, 3.0)
        """
        if not (math.isfinite(margin) and margin >= 0.0):
            raise ValueError(f"margin must be finite and >= 0, got {margin}")
        params = tuple((n, *_widen(n, lo, hi, margin)) for n, lo, hi in self.params)
        root_lo, root_hi = _widen("root_maturity", *(b**0.5 for b in self.maturity), margin)
        width = self.z[1] - self.z[0]
        z = (self.z[0] - margin * width, self.z[1] + margin * width)
        return replace(self, params=params, maturity=(root_lo**2, root_hi**2), z=z)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (inverse of :meth:`from_dict`)."""
        out = asdict(self)
        out["params"] = [list(p) for p in self.params]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Domain:
        """Rebuild a domain from :meth:`to_dict` output."""
        return cls(
            model=str(data["model"]),
            params=tuple((str(n), float(lo), float(hi)) for n, lo, hi in data["params"]),
            maturity=(float(data["maturity"][0]), float(data["maturity"][1])),
            z=(float(data["z"][0]), float(data["z"][1])),
            z_scale=float(data["z_scale"]),
            rtol=float(data.get("rtol", DOMAIN_RTOL)),
        )


_WIDEN_LIMITS = {"rho": (-0.99, 0.99), "beta": (0.0, 1.0), "v0": (0.0, math.inf),
                 "nu": (0.0, math.inf)}  # fmt: skip
"""How far :meth:`Domain.expanded` may widen a parameter (never narrower than the domain)."""


def _widen(name: str, low: float, high: float, margin: float) -> tuple[float, float]:
    width = high - low
    new_low, new_high = low - margin * width, high + margin * width
    if low > 0.0:
        new_low = max(new_low, 0.5 * low)
    limits = _WIDEN_LIMITS.get(name)
    if limits is not None:  # a domain past a limit (rho from -0.995) was narrowed to it, margin
        # 0 too, so its surrogate served rows it never saw; one wholly past it was refused
        new_low = max(new_low, min(limits[0], low))
        new_high = min(new_high, max(limits[1], high))
    return new_low, new_high


def _within(x: np.ndarray, low: float, high: float, rtol: float) -> np.ndarray:
    tol_low, tol_high = rtol * max(abs(low), 1.0), rtol * max(abs(high), 1.0)
    with np.errstate(invalid="ignore"):
        return (x >= low - tol_low) & (x <= high + tol_high)


def _broadcast_columns(columns: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    missing = [n for n in names if n not in columns]
    if missing:
        raise KeyError(f"query is missing the field(s) {missing}")
    arrays = [np.asarray(_to_numpy(columns[n]), dtype=np.float64) for n in names]
    return dict(zip(names, np.broadcast_arrays(*(np.atleast_1d(a) for a in arrays)), strict=True))


def _to_numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


HESTON_DOMAIN = Domain(
    model="heston",
    params=(
        ("v0", 0.01, 0.25),
        ("kappa", 0.5, 5.0),
        ("theta", 0.01, 0.25),
        ("sigma", 0.1, 1.0),
        ("rho", -0.95, 0.0),
    ),
    maturity=(30.0 / 365.0, 3.0),
)
"""Heston box of issue 5: 30 days to 3 years, ``ln(K/F) = 0.2 z sqrt(T)`` with ``|z| <= 2.5``."""

SABR_DOMAIN = Domain(
    model="sabr",
    params=(
        ("alpha", 0.05, 0.5),
        ("beta", 0.0, 1.0),
        ("rho", -0.75, 0.75),
        ("nu", 0.05, 1.0),
    ),
    maturity=(0.25, 30.0),
    z=(-2.0, 2.0),
    z_scale=0.2,
)
"""SABR box (forward-normalised, ``F = 1``): maturities 3 months to 30 years, ``|z| <= 2``."""

SABR_PDE_DOMAIN = replace(SABR_DOMAIN, maturity=(0.25, 10.0))
"""The SABR box up to 10 years: the domain of the PDE-labelled SABR surrogate (QuantLib's
finite-difference engine, ``engine="quantlib"``), where Hagan's expansion is off by hundreds of bp
in long-dated wings."""

DOMAINS: dict[str, Domain] = {"heston": HESTON_DOMAIN, "sabr": SABR_DOMAIN}
NAMED_DOMAINS: dict[str, Domain] = {**DOMAINS, "sabr-pde": SABR_PDE_DOMAIN}
"""Domains by the names ``qfnet generate --domain`` takes (default: the model's own)."""


def sample(
    domain: Domain, n: int, *, seed: int, start: int = 0, method: str = "sobol"
) -> pd.DataFrame:
    """Points ``start .. start + n - 1`` of the domain's scrambled Sobol sequence for ``seed``
    (``method="random"``: ``n`` independent uniform points instead, e.g. fresh test points that
    share nothing with a Sobol training set; ``start`` must then be 0).

    Parameters and ``z`` are uniform in their intervals; the maturity is uniform in ``sqrt(T)``
    (denser at the short end, where smiles change fastest).

    Returns:
        One row per point: the parameters, ``maturity``, ``z``, ``log_moneyness``, ``strike``,
        ``forward`` (1), ``discount`` (1) and ``option_type`` (out-of-the-money side).

    Examples:
        >>> sample(HESTON_DOMAIN, 4, seed=0).shape
        (4, 12)
        >>> bool(sample(SABR_DOMAIN, 100, seed=1, method="random")["maturity"].between(0.25, 30).all())
        True
    """
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    if method not in ("sobol", "random") or (method == "random" and start):
        raise ValueError(f"method must be 'sobol', or 'random' with start=0, got {method!r}")
    if method == "sobol" and start + n > SOBOL_MAX_POINTS:
        raise ValueError(f"points {start} .. {start + n - 1} (n={n}, start={start}) reach past "
                         f"the {SOBOL_MAX_POINTS} (2**30) points of a Sobol sequence")  # fmt: skip
    names = domain.param_names
    if method == "random":
        u = np.random.default_rng(seed).random((n, len(names) + 2))
    else:
        from scipy.stats import qmc  # here, not at the top: scipy.stats takes ~0.5 s to import

        sobol = qmc.Sobol(d=len(names) + 2, scramble=True, seed=np.random.default_rng(seed))
        if start:
            sobol.fast_forward(start)
        with warnings.catch_warnings():  # any run of consecutive Sobol points is a valid sample
            warnings.filterwarnings("ignore", message="The balance", category=UserWarning)
            u = sobol.random(n)  # (N, P + 2)
    data: dict[str, Any] = {}
    for j, (name, low, high) in enumerate(domain.params):
        data[name] = low + (high - low) * u[:, j]
    root_lo, root_hi = math.sqrt(domain.maturity[0]), math.sqrt(domain.maturity[1])
    maturity = (root_lo + (root_hi - root_lo) * u[:, -2]) ** 2
    data["maturity"] = np.clip(maturity, *domain.maturity)
    data["z"] = domain.z[0] + (domain.z[1] - domain.z[0]) * u[:, -1]
    data["log_moneyness"] = data["z"] * domain.z_scale * np.sqrt(data["maturity"])
    data["strike"] = np.exp(data["log_moneyness"])
    data["forward"] = np.ones(n)
    data["discount"] = np.ones(n)
    data["option_type"] = np.where(data["log_moneyness"] >= 0.0, "call", "put")
    return pd.DataFrame(data)


@dataclass(frozen=True)
class _ShardTask:
    """Everything one worker needs to make one shard: a pure function of these fields."""

    domain: dict[str, Any]
    engine: str
    seed: int
    index: int
    start: int
    count: int
    threads: int = field(default=1)
    device: str = field(default="cpu")
    compile: bool = field(default=False)


def _make_shard(task: _ShardTask) -> tuple[int, pd.DataFrame]:
    """Sample and label one shard (runs in a worker process or on a Dask worker)."""
    if task.threads > 0:
        torch.set_num_threads(task.threads)
    domain = Domain.from_dict(task.domain)
    points = sample(domain, task.count, seed=task.seed, start=task.start)
    # indexed by dataset row, which a label error names (it named the row within the shard)
    points.index = pd.RangeIndex(task.start, task.start + task.count)
    mc_seed = int(np.random.SeedSequence([task.seed, task.index]).generate_state(1)[0])
    labelled = label(
        points,
        model=domain.model,
        engine=task.engine,
        seed=mc_seed,
        device=task.device,
        compile=task.compile,
    )
    labelled.insert(0, "sample_index", np.arange(task.start, task.start + task.count))
    return task.index, labelled


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_shard(frame: pd.DataFrame, path: Path) -> None:
    # a full disk or Ctrl-C mid-write leaves no half-written file behind
    replace_atomically(
        path, lambda f: frame.to_parquet(f, index=False, engine="pyarrow", compression="zstd")
    )


def _versions() -> dict[str, str]:
    import platform

    import pyarrow
    import scipy

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,  # its Sobol engine draws the points
        "pandas": pd.__version__,
        "pyarrow": pyarrow.__version__,
        "torch": str(torch.__version__),
    }
    # the distributions' metadata: qfnet's pricers label the points (pricing does not import
    # qfnet), and only pricing.quantlib imports QuantLib itself
    for name in ("qfnet", "QuantLib"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _run_tasks(
    tasks: list[_ShardTask], workers: int, scheduler: str | None
) -> Iterator[tuple[int, pd.DataFrame]]:
    if not tasks:  # a resumed generation whose shards were all kept: its scheduler (gone with
        # the run that wrote them) was refused as "cannot connect", and nothing was left to do
        return
    if scheduler is not None:
        from distributed import Client
        from distributed import as_completed as dask_completed

        try:
            client = Client(scheduler)
        except (OSError, ValueError, TypeError) as error:  # bad address, no scheduler there
            raise ValueError(f"Dask scheduler {scheduler!r}: cannot connect ({error})") from error
        with client:
            futures = client.map(_make_shard, tasks, pure=False)
            for future in dask_completed(futures):
                yield future.result()
                future.release()
    elif workers <= 1:
        for task in tasks:
            yield _make_shard(task)
    else:
        # A Pool's exit terminates its workers: on an error, Ctrl-C or SIGTERM (which qfnet's
        # entry point turns into an exception) they stop at once. ProcessPoolExecutor waited
        # for the running shards, and a SIGTERM'd parent left its workers orphaned for good.
        # no more processes than shards: each idle one started a Python and imported torch
        with get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            yield from pool.imap_unordered(_make_shard, tasks)


def generate(
    out: str | os.PathLike[str],
    *,
    model: str = "heston",
    n: int,
    engine: str | None = None,
    seed: int = 0,
    shard_size: int = 65_536,
    workers: int = 1,
    scheduler: str | None = None,
    domain: Domain | None = None,
    margin: float = 0.0,
    threads_per_worker: int = 1,
    device: str = "cpu",
    compile: bool = False,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Sample, label and write a dataset of ``n`` points as Parquet shards plus ``metadata.json``.

    Args:
        out: target directory (created; must not already hold a dataset, finished or not).
        model: ``"heston"`` or ``"sabr"``.
        n: number of points (> 0, at most 2**30: one Sobol sequence).
        engine: label engine (default ``analytic`` for Heston, ``hagan`` for SABR).
        seed: fixes the Sobol scrambling (and the Monte Carlo noise). Datasets of one seed and
            domain share their points (the smaller one is the first rows of the larger, whatever
            the engine): held-out data needs another seed.
        shard_size: points per shard (a power of two keeps each shard a balanced Sobol block).
        workers: local processes (1: in this process).
        scheduler: address of a Dask scheduler (``tcp://host:8786``); overrides ``workers``.
        domain: parameter box (default :data:`HESTON_DOMAIN` / :data:`SABR_DOMAIN`), recorded as
            the domain of the dataset (and of surrogates trained on it).
        margin: sample from ``domain.expanded(margin)`` (see :meth:`Domain.expanded`), so that
            a surrogate is trained beyond the edges of the domain it will serve.
        threads_per_worker: torch threads in each worker (0 leaves torch's default); with
            ``workers=1`` the shards are made in this process, whose setting is restored after.
        device: where each worker labels (``cpu``, ``cuda``, ``cuda:1``...): the torch engines
            and the implied-vol solver run there; the labels are float64 either way, identical
            for any ``workers`` split on the same device, and across ``shard_size`` to rounding
            (the pricers' batched reductions: ~1e-16), but for the ``mc`` engine, whose noise
            is drawn per shard (from the seed and the shard's index): another ``shard_size``
            gives other Monte Carlo noise, within the labels' ``std_error``.
        compile: label with the ``torch.compile``-fused Heston pricer (``analytic`` engine only):
            about twice the CPU throughput after a one-off compilation in each worker
            (seconds with a warm inductor cache, about a minute cold), so for large datasets; labels
            agree with the eager ones to about 1e-15 (recorded in the metadata).
        progress: show a progress bar over shards done.
        resume: continue the interrupted generation in ``out``, with the same arguments (the
            device and worker count may differ): its whole shards are kept, the others made, and
            the dataset is the one an uninterrupted run writes (see :mod:`pricing._generation`);
            on another device than the first run's, to rounding, but for the ``mc`` engine,
            whose noise comes from another random stream on an accelerator. Other arguments
            than the first run's raise :class:`ResumeMismatch`, naming them.

    Returns:
        The dataset directory.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = generate(f"{tmp}/ds", n=8, shard_size=4, progress=False)
        ...     frame, meta = load_dataset(path)
        >>> len(frame), meta["n_shards"], meta["engine"]
        (8, 2, 'analytic')
    """
    if model not in DOMAINS:
        raise ValueError(f"model must be one of {sorted(DOMAINS)}, got {model!r}")
    engine = engine or ("analytic" if model == "heston" else "hagan")
    if engine not in ENGINES[model]:
        raise ValueError(
            f"engine for {model} must be one of {sorted(ENGINES[model])}, got {engine!r}"
        )
    for name, value in (("n", n), ("shard_size", shard_size), ("workers", workers)):
        check_positive_int(name, value)  # numpy integers are whole numbers; True is not
    n, shard_size, workers = int(n), int(shard_size), int(workers)
    if n > SOBOL_MAX_POINTS:  # scipy refused it in the worker of the last shard, hours later
        raise ValueError(f"n = {n} is more than the {SOBOL_MAX_POINTS} (2**30) points of one "
                         "Sobol sequence: generate several datasets of other seeds")  # fmt: skip
    if not is_whole(seed) or seed < 0:  # a numpy seed failed in json.dumps, leaving --out behind
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    device = check_device(device)
    if compile:
        check_compile(model, engine)
    domain = domain or DOMAINS[model]
    if domain.model != model:
        raise ValueError(f"domain is for {domain.model!r}, not {model!r}")
    sampling = domain.expanded(margin)  # validates margin before anything is created
    path = Path(out)
    if (path / "metadata.json").exists():
        raise FileExistsError(f"{path} already holds a dataset; choose another --out")
    created = not path.exists()
    if resume and created:
        raise FileNotFoundError(f"{path} holds no unfinished generation to resume")
    path.mkdir(parents=True, exist_ok=True)
    plan = {"model": model, "engine": engine, "seed": seed, "n": n, "shard_size": shard_size,
            "compiled": compile, "domain": domain.to_dict(),
            "sampling_domain": sampling.to_dict()}  # fmt: skip
    _generation.start(path, plan, resume)
    tasks = [
        _ShardTask(
            sampling.to_dict(),
            engine,
            seed,
            i,
            start,
            min(shard_size, n - start),
            threads_per_worker,
            device,
            compile,
        )
        for i, start in enumerate(range(0, n, shard_size))
    ]
    if progress:
        from tqdm.auto import tqdm
    else:  # tqdm.auto warns on import in a notebook without ipywidgets, shown bar or not
        from tqdm import tqdm

    kept = {}
    if resume:
        kept = _generation.kept_shards(
            path,
            [_shard_name(t.index) for t in tasks],
            [range(t.start, t.start + t.count) for t in tasks],
            lambda rows: sample(sampling, len(rows), seed=seed, start=rows.start),
        )
    unlabelled = sum(kept.values())
    todo = [task for task in tasks if task.index not in kept]
    threads = torch.get_num_threads()  # shards made in this process set it: it stayed at 1
    written = len(kept)
    try:
        with tqdm(total=len(tasks), initial=len(kept), desc="shards", unit="shard",
                  disable=not progress) as bar:  # fmt: skip
            for index, frame in _run_tasks(todo, workers, scheduler):
                _write_shard(frame, path / _shard_name(index))
                written += 1
                unlabelled += int(frame["implied_vol"].isna().sum())
                bar.update(1)
    except BaseException:  # a dead scheduler, a failed label, Ctrl-C: no empty folder left behind
        if not written:  # nor a plan without a shard: in a folder that held other files, the
            # plan stayed, and the same command was refused ("holds an unfinished generation")
            _generation.discard(path)
            if created:
                path.rmdir()
        raise
    finally:
        torch.set_num_threads(threads)
    digests = [_file_digest(path / _shard_name(task.index)) for task in tasks]
    meta = _metadata(domain, sampling, engine, seed, n, shard_size, len(tasks), compile,
                     unlabelled, digests)  # fmt: skip
    _generation.finish(path, meta)  # the plan becomes metadata.json in one rename
    if unlabelled:
        warnings.warn(f"{unlabelled} of {n} options got no implied vol (the {engine} engine "
                      f"gave {unlabelled_reason(model, engine)}); training drops those rows",
                      stacklevel=2)  # fmt: skip
    return path


def _metadata(
    domain: Domain,
    sampling: Domain,
    engine: str,
    seed: int,
    n: int,
    shard_size: int,
    n_shards: int,
    compiled: bool = False,
    unlabelled: int = 0,
    digests: list[str] | None = None,
) -> dict[str, Any]:
    """The dataset's ``metadata.json`` (it holds the generation plan's fields, same values);
    ``digests``: the SHA-256 of each shard file, which :func:`load_dataset` checks."""
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": "pricing.datasets.generate",
        "model": domain.model,
        "engine": engine,
        "compiled": compiled,
        "seed": seed,
        "n": n,
        "shard_size": shard_size,
        "n_shards": n_shards,
        "unlabelled": unlabelled,
        "shards": [_shard_name(i) for i in range(n_shards)],
        "domain": domain.to_dict(),
        "sampling_domain": sampling.to_dict(),
        "sampling": {
            "method": "scrambled Sobol (scipy.stats.qmc.Sobol), shard i = points "
            "[i * shard_size, (i + 1) * shard_size)",
            "dimensions": [*domain.param_names, "maturity", "z"],
            "maturity": "uniform in sqrt(maturity)",
            "strike": "log_moneyness = z * z_scale * sqrt(maturity), forward = 1, discount = 1",
            "labels": "Hagan's vol and its Black price of the out-of-the-money option"
            if engine == "hagan"
            else "price of the out-of-the-money option, Black implied vol of that price",
            "unlabelled": f"NaN where the engine gave {unlabelled_reason(domain.model, engine)}",
        },
        "versions": _versions(),
    }
    if digests is not None:
        meta["shard_sha256"] = list(digests)
    return meta


def load_dataset(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a dataset directory: all shards concatenated in order, and the metadata.

    Raises:
        FileNotFoundError: the directory, its metadata or one of its shards is missing.
        ValueError: the metadata is not a qfnet dataset of a version this code reads (or is cut
            or edited: the message names its field), or a shard does not match it (unreadable,
            cut, replaced, copied from another dataset, without its labels or one of the
            domain's input columns), or its ``engine``, ``compiled``, ``shard_size`` or
            ``seed`` is not the one that made the shards (Heston ``analytic`` and ``quantlib``
            labels agree too closely to tell apart; the seed is checked where the running scipy
            and numpy are the generation's: scipy's Sobol engine drew the points, scrambled by
            numpy's generator).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     frame, meta = load_dataset(generate(f"{tmp}/ds", n=4, progress=False))
        >>> bool(frame[["price", "implied_vol"]].notna().all().all()), meta["model"]
        (True, 'heston')
    """
    root = Path(path)
    meta_path = root / "metadata.json"
    if not meta_path.is_file():
        if (root / _generation.PLAN_FILE).is_file():  # the message had no word of --resume
            raise FileNotFoundError(f"{root} holds an unfinished generation (no metadata.json): "
                                    "finish it with qfnet generate --resume, same options")  # fmt: skip
        raise FileNotFoundError(f"{root} is not a dataset directory (no metadata.json)")
    meta = _read_metadata(meta_path)
    missing = [s for s in meta["shards"] if not (root / s).is_file()]
    if missing:
        raise FileNotFoundError(f"{root} lacks shard(s) {missing[:3]} (incomplete generation?)")
    shards = [_read_shard(root / s) for s in meta["shards"]]
    frames = [frame for frame, _ in shards]
    # a cut shard, a missing label column or a shortened shard list loaded without a word
    # (a shard without a parameter column failed later as pandas' "['kappa'] not in index")
    domain = Domain.from_dict(meta["domain"])
    needed = {"implied_vol", "price", *domain.input_names}
    for name, frame in zip(meta["shards"], frames, strict=True):
        if not needed <= set(frame.columns):
            raise ValueError(f"{root / name} lacks column(s) {sorted(needed - set(frame.columns))}")
        text = [c for c in sorted(needed) if not pd.api.types.is_float_dtype(frame[c])]
        if text:  # implied vols stored as text loaded as an object column
            raise ValueError(f"{root / name}: column(s) {text} are not floating-point numbers")
    # shards with digests are checked before the row count, which named no file for a cut
    # shard or one of another dataset's shard_size ("holds 10 rows, its metadata n = 12");
    # without digests the count comes first (a cut shard's successor is off, not the shard)
    digested = "shard_sha256" in meta
    if digested:
        _check_shard_files(root, meta_path, meta, shards)
    frame = pd.concat(frames, ignore_index=True)
    if "n" in meta and len(frame) != meta["n"]:
        raise ValueError(f"{root} holds {len(frame)} rows, its metadata n = {meta['n']} "
                         "(a truncated or replaced shard?)")  # fmt: skip
    if not digested:
        _check_shard_files(root, meta_path, meta, shards)
    # an edited seed, shard_size or engine loaded without a word (and went into a run's record)
    _check_engine(meta_path, meta, domain.model, frames)
    _check_shard_sizes(meta_path, meta, frames)
    _check_seed(meta_path, meta, frames[0])
    return frame, meta


def _read_shard(path: Path) -> tuple[pd.DataFrame, str]:
    """A shard and the SHA-256 of its file (read once); an unreadable one is named."""
    import pyarrow

    data = path.read_bytes()
    try:  # pyarrow's own reader of the bytes: a Python BytesIO read slower than the file
        frame = pd.read_parquet(pyarrow.BufferReader(data))
    except Exception as err:  # pyarrow raises several types for cut or foreign files
        raise ValueError(f"{path} is not a readable Parquet shard ({err})") from err
    return frame, hashlib.sha256(data).hexdigest()


_COUNT_FIELDS = ("n", "n_shards", "shard_size", "seed", "unlabelled")
"""Integer fields of the metadata (a string n was reported as "holds 6 rows, its n = 6")."""


def _read_metadata(meta_path: Path) -> dict[str, Any]:
    """The metadata of a dataset; a cut or edited file is a ValueError naming it and the field
    (it was a bare JSON error, or a KeyError traceback for a file without its shard list), and
    a file of a format version this code does not read is refused (it was read as version 1)."""
    meta = read_json(meta_path, "a cut, edited or foreign metadata file?")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a {FORMAT} metadata file")
    version = meta.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ValueError(f"{meta_path}: field 'format_version' is {version!r}; this code reads "
                         f"{FORMAT} version(s) {list(READABLE_VERSIONS)} (a newer qfnet's "
                         "dataset?)")  # fmt: skip
    shards = meta.get("shards")
    if not (isinstance(shards, list) and shards
            and all(isinstance(s, str) and s == Path(s).name for s in shards)):  # fmt: skip
        # a path in the list (/elsewhere/shard.parquet) loaded a file of another folder
        raise ValueError(f"{meta_path}: field 'shards' must be a list of shard file names "
                         "(at least one, in the dataset's directory)")  # fmt: skip
    for name in _COUNT_FIELDS:
        if name in meta and (type(meta[name]) is not int or meta[name] < 0):
            raise ValueError(f"{meta_path}: field {name!r} must be a non-negative integer, got "
                             f"{meta[name]!r}")  # fmt: skip
    if len(shards) != meta.get("n_shards", len(shards)):
        raise ValueError(f"{meta_path} lists {len(shards)} shards, not n_shards = "
                         f"{meta['n_shards']}")  # fmt: skip
    digests = meta.get("shard_sha256", shards)  # absent from datasets written before it
    if not (isinstance(digests, list) and len(digests) == len(shards)
            and all(isinstance(d, str) for d in digests)):  # fmt: skip
        raise ValueError(f"{meta_path}: field 'shard_sha256' must list one digest per shard")
    try:
        domain = Domain.from_dict(meta["domain"])
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(f"{meta_path}: field 'domain' is not a valid domain ({err!r})") from err
    if meta.get("model", domain.model) != domain.model:
        raise ValueError(f"{meta_path}: field 'model' is {meta['model']!r}, its domain's model "
                         f"{domain.model!r}")  # fmt: skip
    if "sampling_domain" in meta:
        _check_sampled(meta_path, domain, meta["sampling_domain"])
    return meta


def _check_sampled(meta_path: Path, domain: Domain, sampling: Any) -> None:
    """The domain lies inside the box its points were drawn from (``domain.expanded(margin)``
    holds it): a domain widened by hand (rho from -0.95 to -0.99) loaded, and the surrogate
    trained on it served rho = -0.98, which no row had, without a word."""
    try:
        box = Domain.from_dict(sampling)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(f"{meta_path}: field 'sampling_domain' is not a valid domain "
                         f"({err!r})") from err  # fmt: skip
    if box.model != domain.model or domain.rtol > box.rtol:
        raise ValueError(f"{meta_path}: fields 'domain' and 'sampling_domain' disagree on the "
                         "model or the edges' tolerance (rtol): an edited domain?")  # fmt: skip
    pairs = [(n, domain.bounds(n), box.bounds(n)) for n in (*domain.param_names, "maturity")]
    # log-moneyness edges per unit sqrt(T): z * z_scale (the maturities are checked above)
    pairs.append(("log_moneyness / sqrt(T)", tuple(z * domain.z_scale for z in domain.z),
                  tuple(z * box.z_scale for z in box.z)))  # fmt: skip
    for name, (low, high), (box_low, box_high) in pairs:
        # maturity edges go through sqrt(T)**2 when expanded: a few ulps, not a widening
        tol_low, tol_high = DOMAIN_RTOL * max(abs(low), 1.0), DOMAIN_RTOL * max(abs(high), 1.0)
        if not (box_low - tol_low <= low and high <= box_high + tol_high):
            raise ValueError(f"{meta_path}: field 'domain' bounds {name} to [{low:g}, {high:g}], "
                             f"beyond the [{box_low:g}, {box_high:g}] its points were sampled "
                             "from ('sampling_domain'): an edited domain? A surrogate trained "
                             "on it would serve points no row holds")  # fmt: skip


def _check_shard_files(
    root: Path, meta_path: Path, meta: dict[str, Any], shards: list[tuple[pd.DataFrame, str]]
) -> None:
    """Shard ``i`` holds the Sobol points that follow shard ``i - 1``'s (a shard replaced by a
    copy of another, same length, loaded without a word, its rows trained on twice) and is the
    file whose SHA-256 the metadata records; the first shard that is not is named."""
    offset, digests = 0, meta.get("shard_sha256")
    for i, (name, (frame, digest)) in enumerate(zip(meta["shards"], shards, strict=True)):
        if "sample_index" in frame.columns:
            index = frame["sample_index"].to_numpy()
            expected = np.arange(offset, offset + len(frame))
            if not np.array_equal(index, expected):
                raise ValueError(f"{root / name} holds sample_index {index[0]} .. {index[-1]}, "
                                 f"not {offset} .. {offset + len(frame) - 1} (a replaced or "
                                 "reordered shard?)")  # fmt: skip
        if digests is not None and digest != digests[i]:
            # a shard of another seed whose sample_index matched loaded without a word
            raise ValueError(f"{root / name} is not the shard {meta_path} records (its SHA-256 "
                             "differs): a shard of another dataset, or an edited one")  # fmt: skip
        offset += len(frame)


def _check_engine(
    meta_path: Path, meta: dict[str, Any], model: str, frames: list[pd.DataFrame]
) -> None:
    """Field ``engine`` is one of the model's and made the shards' labels: ``mc`` labels, and
    only they, carry a ``std_error`` column; SABR ``hagan`` labels are Hagan's vols (to
    rounding), QuantLib's PDE labels are not. ``compiled`` is a flag, true only for Heston
    ``analytic`` labels (``model``: that of the field ``domain``)."""
    engine = meta.get("engine")
    if engine is None:
        return
    if engine not in ENGINES[model]:
        raise ValueError(f"{meta_path}: field 'engine' is {engine!r}, not one of the {model} "
                         f"engines {sorted(ENGINES[model])}")  # fmt: skip
    if any(("std_error" in frame.columns) != (engine == "mc") for frame in frames):
        has = "lack" if engine == "mc" else "hold"
        raise ValueError(f"{meta_path}: field 'engine' is {engine!r}, but its shards {has} the "
                         "std_error column of Monte Carlo labels (an edited engine?)")  # fmt: skip
    compiled = meta.get("compiled", False)
    if not isinstance(compiled, bool) or (compiled and (model, engine) != ("heston", "analytic")):
        raise ValueError(f"{meta_path}: field 'compiled' is {compiled!r}; it is true only for "
                         "heston analytic labels, false otherwise")  # fmt: skip
    hagan = _hagan_labels(frames[0]) if model == "sabr" else None
    if hagan is not None and (engine == "hagan") != hagan:
        which = "are not" if engine == "hagan" else "are"
        raise ValueError(f"{meta_path}: field 'engine' is {engine!r}, but the labels {which} "
                         "Hagan's vols (an edited engine?)")  # fmt: skip


_DRAWS = ("scipy", "numpy")
"""The libraries whose versions decide a seed's points (:func:`_check_seed`)."""
_CHECKED_ROWS = 8
"""Rows of the first shard whose points (and SABR labels) :func:`load_dataset` makes again."""


def _hagan_labels(frame: pd.DataFrame) -> bool | None:
    """Whether the labelled rows among the first of a SABR shard are Hagan's vols; None where
    none of them has a label (or the shard lacks a column of Hagan's formula)."""
    from pricing.sabr import lognormal_vol

    names = ["forward", "strike", "maturity", "alpha", "beta", "rho", "nu", "implied_vol"]
    if not set(names) <= set(frame.columns):
        return None
    rows = frame.head(_CHECKED_ROWS)[names].to_numpy(float)  # (R, 8)
    rows = rows[np.isfinite(rows).all(axis=1)]  # a NaN input is load_training_tensors' to name
    if not len(rows):
        return None
    vols = lognormal_vol(**{n: torch.tensor(rows[:, i]) for i, n in enumerate(names[:-1])})
    # 1e-7: labels of earlier versions went through a price and back (1e-9 off on 0.15% of
    # rows); QuantLib's PDE labels differ from Hagan's by far more
    return bool(np.allclose(rows[:, -1], vols.numpy(), rtol=1e-7, atol=0.0))


def _check_shard_sizes(meta_path: Path, meta: dict[str, Any], frames: list[pd.DataFrame]) -> None:
    """Every shard holds ``shard_size`` rows but the last, which holds 1 to ``shard_size``."""
    size = meta.get("shard_size")
    for i, (name, frame) in enumerate(zip(meta["shards"], frames, strict=True)):
        last = i == len(frames) - 1
        if size is not None and len(frame) != size and not (last and 0 < len(frame) < size):
            raise ValueError(f"{meta_path}: field 'shard_size' is {size}, but {name} holds "
                             f"{len(frame)} rows (every shard holds shard_size rows, the last "
                             "1 to shard_size)")  # fmt: skip


def _check_seed(meta_path: Path, meta: dict[str, Any], first: pd.DataFrame) -> None:
    """The first shard's first points are those of ``seed``'s Sobol sequence of the
    ``sampling_domain``. Checked only where the running scipy and numpy are the generation's
    (scipy's Sobol engine draws the points, scrambled by numpy's generator: other versions may
    draw others for the same seed)."""
    if "seed" not in meta or "sampling_domain" not in meta:
        return
    versions, running = meta.get("versions"), _versions()  # as generate records them
    if not isinstance(versions, dict) or any(versions.get(k) != running[k] for k in _DRAWS):
        return
    box = Domain.from_dict(meta["sampling_domain"])
    rows = first.head(_CHECKED_ROWS)
    points = sample(box, len(rows), seed=meta["seed"])
    for name in [c for c in (*box.param_names, "maturity", "z") if c in rows]:
        given, drawn = rows[name].to_numpy(float), points[name].to_numpy()
        kept = np.isfinite(given)  # a NaN input is load_training_tensors' to name
        if not np.allclose(given[kept], drawn[kept], rtol=1e-9, atol=1e-12):
            raise ValueError(f"{meta_path}: field 'seed' is {meta['seed']}, but the first shard "
                             f"does not hold that seed's points ({name} differs): an edited "
                             "seed?")  # fmt: skip
