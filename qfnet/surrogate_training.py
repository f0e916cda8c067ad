"""Training a surrogate (:mod:`qfnet.surrogate`) on a generated dataset through the shared Trainer.

The run directory gets what every qfnet run has (``config.json``, ``metrics.csv``, TensorBoard
events, ``checkpoints/{last,best}.pt``, ``loss.png``) plus ``model.pt`` (the surrogate file),
``error_hist.png`` (test-set implied-vol errors in bp) and ``summary.json``. The loss is the mean
squared implied-vol error in bp^2. Batches are cut from in-memory tensors by index (a per-sample
DataLoader would cost more than the network itself); their order depends only on
``(seed, epoch)``, so an interrupted run resumed with ``resume=True`` ends with the same weights.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pricing._atomic import save_figure_atomically
from pricing._validation import json_safe, read_json
from pricing.datasets import Domain, load_dataset
from qfnet.surrogate import SurrogateNet, build_surrogate, load_surrogate, save_surrogate
from qfnet.training.checkpoint import ModelFileError, damage_summary, write_text_atomically

__all__ = [
    "export_checkpoint",
    "load_training_tensors",
    "train_surrogate",
    "vol_error_bp",
    "vol_loss_bp2",
]


def vol_loss_bp2(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared implied-vol error in bp^2 (the training loss).

    Shape:
        - predicted, target: (N,)
        - output: (N,)

    Examples:
        >>> vol_loss_bp2(torch.tensor([0.2002]), torch.tensor([0.2])).round()
        tensor([4.])
    """
    return ((predicted - target) * 1e4) ** 2


def vol_error_bp(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample absolute implied-vol error in bp (a metric). Shape: (N,), (N,) -> (N,).

    Examples:
        >>> errors = vol_error_bp(torch.tensor([0.2010, 0.1995]), torch.tensor([0.2, 0.2]))
        >>> [round(e, 2) for e in errors.tolist()]
        [10.0, 5.0]
    """
    return (predicted - target).abs() * 1e4


def load_training_tensors(
    path: str | os.PathLike[str],
) -> tuple[torch.Tensor, torch.Tensor, Domain, dict[str, Any]]:
    """Inputs ``(N, P + 2)``, implied vols ``(N,)``, domain and metadata of a dataset directory.

    Rows without a finite positive implied vol (prices with no Black vol) are dropped; their
    count is in ``metadata["dropped_rows"]``. More such rows than the generator recorded
    (``metadata["unlabelled"]``), or a non-finite input (the generator writes none), are refused
    as a damaged dataset, naming the column and row.

    Shape:
        - inputs: (N, P + 2), columns :attr:`Domain.input_names`; implied vols: (N,)

    Examples:
        >>> import tempfile
        >>> from pricing.datasets import generate
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = generate(f"{tmp}/ds", model="sabr", n=16, progress=False)
        ...     x, iv, domain, meta = load_training_tensors(data)
        >>> x.shape, iv.shape, domain.input_names[-2:], meta["dropped_rows"]
        (torch.Size([16, 6]), torch.Size([16]), ('maturity', 'log_moneyness'), 0)
    """
    frame, meta = load_dataset(path)
    domain = Domain.from_dict(meta["domain"])
    x = torch.tensor(frame[list(domain.input_names)].to_numpy(dtype=np.float64))
    iv = torch.tensor(frame["implied_vol"].to_numpy(dtype=np.float64))
    bad = ~torch.isfinite(x)
    if bad.any():  # a damaged row, not a missing label: it was dropped without a word
        row, col = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"dataset {path}: column {domain.input_names[col]!r} is not finite at "
                         f"row {row} ({int(bad.any(dim=1).sum())} rows with a non-finite "
                         "input)")  # fmt: skip
    keep = torch.isfinite(iv) & (iv > 0)
    dropped = int((~keep).sum())
    if dropped > meta.get("unlabelled", dropped):  # a third of the labels NaN'd went unsaid
        row = int(torch.nonzero(~keep)[0])
        raise ValueError(f"dataset {path}: {dropped} rows have no finite positive 'implied_vol' "
                         f"(the first at row {row}), its metadata records {meta['unlabelled']} "
                         "unlabelled at generation: a damaged or edited shard?")  # fmt: skip
    meta = {**meta, "dropped_rows": dropped}
    if int(keep.sum()) < 2:
        raise ValueError(f"dataset {path} has fewer than 2 usable rows")
    return x[keep], iv[keep], domain, meta


class _Batches(Dataset):
    """Item ``idx`` (an index tensor) is the batch ``(x[idx], y[idx])``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


class _BatchSampler(Sampler[torch.Tensor]):
    """Index batches of rank ``rank``'s share of ``n`` rows (of ``num_replicas`` DDP ranks).

    The permutation is a function of ``(seed, epoch)``. With ``equal_shares`` every rank gets
    ``n // num_replicas`` rows (the last ``n % num_replicas`` of the permutation are left out
    that epoch); otherwise the shares differ by at most one row and cover every row once.
    The ``rank`` and ``num_replicas`` attributes tell the Trainer that it shards itself.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        num_replicas: int = 1,
        equal_shares: bool = True,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.num_replicas, self.equal_shares = rank, num_replicas, equal_shares
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_indices(self) -> torch.Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        if self.equal_shares:
            order = order[: self.n - self.n % self.num_replicas]
        return order.tensor_split(self.num_replicas)[self.rank]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._rank_indices().split(self.batch_size))

    def __len__(self) -> int:
        return math.ceil(len(self._rank_indices()) / self.batch_size)


def _loader(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    rank: int,
    num_replicas: int,
    equal_shares: bool,
) -> DataLoader:
    """Batches of rank ``rank``'s share of ``(x, y)`` (see :class:`_BatchSampler`)."""
    sampler = _BatchSampler(len(y), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                            num_replicas=num_replicas, equal_shares=equal_shares)  # fmt: skip
    return DataLoader(_Batches(x, y), batch_size=None, sampler=sampler)


def _split(n: int, val_fraction: float, test_fraction: float, seed: int) -> list[torch.Tensor]:
    if not (0.0 < val_fraction < 0.5 and 0.0 < test_fraction < 0.5):
        raise ValueError("val_fraction and test_fraction must be in (0, 0.5)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val, n_test = max(1, round(val_fraction * n)), max(1, round(test_fraction * n))
    if n - n_val - n_test < 2:  # the scalers' standard deviations need two training rows
        raise ValueError(f"dataset of {n} rows is too small to split: {n_val} validation and "
                         f"{n_test} test rows leave {n - n_val - n_test} training rows, "
                         "at least 2 are needed")  # fmt: skip
    return [order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]]


_ARCH_FILE = "surrogate_config.json"


DEFAULT_HIDDEN = (128, 128, 128, 128)
"""Hidden widths of a new run's network (``hidden=None``)."""
DEFAULT_ACTIVATION = "silu"
"""Activation of a new run's network (``activation=None``)."""


def _architecture(
    out: Path,
    resume: bool,
    hidden: Sequence[int] | None,
    activation: str | None,
    domain: Domain,
    sampling: dict | None,
    split: dict,
    dataset: dict,
    training: dict,
    base: str | None = None,
) -> tuple[tuple[int, ...], str, str | None]:
    """On resume the run's widths and activation must be the ones given, if given (other ones
    were dropped silently for the run's own; None takes the run's), and its own base vol wins;
    its domain must be the dataset's (the scalers and weights were fitted on it), and so must
    the box its points were drawn from (``sampling``, the domain widened by the generation's
    ``margin``); its dataset the same (``dataset``: size, seed, engine) and its split (``seed``
    and fractions) the same: another one would test on rows it trained on; so must its
    ``training`` settings (batch size, learning rate, epochs). Without resume, a directory
    holding a run is refused (``overwrite`` replaces it)."""
    path = out / _ARCH_FILE
    if not (resume and path.is_file()):
        hidden = DEFAULT_HIDDEN if hidden is None else hidden
        return tuple(int(h) for h in hidden), activation or DEFAULT_ACTIVATION, base
    saved = _read_architecture(path)
    if "domain" in saved and saved["domain"] != json.loads(json.dumps(domain.to_dict())):
        raise ValueError(f"--resume: the run in {out} was trained on another domain than "
                         "this dataset's; resume with its own dataset, or --init from it")  # fmt: skip
    # a dataset of another --margin has the same domain, size and seed (and often as many rows):
    # the run continued on points drawn from another box without a word
    if "sampling_domain" in saved and saved["sampling_domain"] != sampling:
        raise ValueError(f"--resume: the run in {out} was trained on points drawn from another "
                         "box (the dataset's sampling_domain: another generation --margin) than "
                         "this dataset's; resume with its own dataset, or --init from it")  # fmt: skip
    # A larger dataset of the same seed starts with the same Sobol points, but splits them
    # otherwise: the resumed run tested on rows it had trained on, and reported the new sizes.
    if "dataset" in saved and saved["dataset"] != dataset:
        raise ValueError(f"--resume: the run in {out} was trained on another dataset "
                         f"({_describe(saved['dataset'])}) than this one ({_describe(dataset)}); "
                         "resume with its own dataset, or --init from it")  # fmt: skip
    for name, value in split.items():
        if name in saved.get("split", {}) and saved["split"][name] != value:
            flag = "--seed" if name == "seed" else name
            raise ValueError(f"--resume: the run in {out} was started with {flag} "
                             f"{saved['split'][name]}, not {value}: its train/validation/test "
                             "split depends on it; resume with the same value")  # fmt: skip
    # other layer widths were dropped silently for the run's own, while another --lr was named
    asked = {"hidden": None if hidden is None else [int(h) for h in hidden],
             "activation": activation}  # fmt: skip
    for name, value in asked.items():
        if value is not None and saved[name] != value:
            was, now = (",".join(map(str, v)) if name == "hidden" else repr(v)
                        for v in (saved[name], value))  # fmt: skip
            flag = "--hidden" if name == "hidden" else name  # activation: no command option
            raise ValueError(f"--resume: the run in {out} was started with {flag} {was}, not "
                             f"{now}; resume with the same value (or train a new run, --init "
                             "from this one)")  # fmt: skip
    # another batch size or learning rate was taken silently (and recorded as the run's)
    for name, value in training.items():
        if name in saved.get("training", {}) and saved["training"][name] != value:
            flag = {"batch_size": "--batch-size", "lr": "--lr", "epochs": "--epochs"}.get(
                name, name
            )
            raise ValueError(f"--resume: the run in {out} was started with {flag} "
                             f"{saved['training'][name]}, not {value}; resume with the same "
                             "value (or train a new run, --init from this one)")  # fmt: skip
    return tuple(saved["hidden"]), str(saved["activation"]), saved.get("base", base)


def _read_architecture(path: Path) -> dict[str, Any]:
    """A run's ``surrogate_config.json``; a cut or edited one is named with its field (it was a
    bare JSONDecodeError, or a KeyError / AttributeError)."""
    saved = read_json(path, "a cut, edited or damaged run configuration?")
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a surrogate run configuration (a JSON object)")
    hidden = saved.get("hidden")
    if not (isinstance(hidden, list) and all(type(h) is int and h > 0 for h in hidden)):
        raise ValueError(f"{path}: field 'hidden' must be a list of positive layer widths, got "
                         f"{hidden!r}")  # fmt: skip
    if not isinstance(saved.get("activation"), str):
        raise ValueError(f"{path}: field 'activation' must be a name, got "
                         f"{saved.get('activation')!r}")  # fmt: skip
    if "domain" in saved:
        try:
            Domain.from_dict(saved["domain"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"{path}: field 'domain' is not a valid domain ({err!r})") from err
    return saved


def _dataset_identity(meta: dict[str, Any], rows: int) -> dict[str, Any]:
    """What fixes a dataset's rows and so a run's split: size, seed, engine, usable rows."""
    return {"n": meta.get("n"), "seed": meta.get("seed"), "engine": meta.get("engine"),
            "rows": rows}  # fmt: skip


def _describe(dataset: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in dataset.items())


def _check_init_split(
    previous: dict[str, Any],
    init: str | os.PathLike[str],
    data: str | os.PathLike[str],
    dataset: dict[str, Any],
    split: dict[str, Any],
    rows: dict[str, int],
) -> None:
    """A fine-tuning run on the dataset its ``init`` surrogate was trained on must split it as
    that run did: with another ``--seed`` 78 of its 80 test rows had been training rows of the
    ``init`` run, and its test errors were those of training data. ``previous`` is the ``init``
    file's training summary (files written before ``split`` was recorded: its ``data`` path,
    ``seed`` and row counts)."""
    if "dataset" in previous:
        # a dataset of the same seed holds the same points: it must be split the same way too
        same_data = _shares_points(previous["dataset"], dataset, init)
        before = previous.get("split", {})
    else:
        same_data = previous.get("data") == str(Path(data).resolve())
        before = {"seed": previous.get("seed")} if "seed" in previous else {}
    if not same_data:
        return
    for name, value in before.items():
        if value != split.get(name):
            flag = "--seed" if name == "seed" else name
            raise ValueError(f"--init {init} was trained on this dataset's points with {flag} "
                             f"{value}, not {split.get(name)}: another split would test on rows it "
                             "trained on; fine-tune with the same value, or on a dataset of "
                             "another generation seed")  # fmt: skip
    previous_rows = {k: v for k, v in previous.get("rows", {}).items() if k in rows}
    if previous_rows and previous_rows != rows:  # files without the fractions: their counts
        raise ValueError(f"--init {init} was trained on this dataset's points split into "
                         f"{previous_rows} rows, not {rows}: another split would test on rows it "
                         "trained on; fine-tune with its split fractions, or on a dataset of "
                         "another generation seed")  # fmt: skip


def _shares_points(
    before: dict[str, Any], dataset: dict[str, Any], init: str | os.PathLike[str]
) -> bool:
    """Whether ``init`` was trained on this dataset or on one of its generation seed (of one
    domain, ``init``'s), which holds the same Sobol points: of another size, that one is refused,
    its points split otherwise (a fine-tuning run from a 100k-point run on a 400k-point dataset of
    its seed tested on 1,879 of 8,000 rows the ``init`` run had trained on)."""
    if before == dataset:
        return True
    seed = dataset.get("seed")
    if seed is None or before.get("seed") != seed:
        return False
    if before.get("n") != dataset.get("n"):
        raise ValueError(f"--init {init} was trained on a dataset of the same generation seed "
                         f"{seed} (n {before.get('n')}): it holds the first points of this one "
                         f"(n {dataset.get('n')}) or they of it, and another split would test on "
                         "rows it trained on; fine-tune on a dataset generated with another "
                         "--seed")  # fmt: skip
    return True


def _check_fresh(out: Path, resume: bool, overwrite: bool) -> None:
    """A new run may not silently replace one already in ``out`` (its checkpoints would go)."""
    held = [n for n in ("model.pt", "checkpoints/last.pt") if (out / n).exists()]
    if held and not resume and not overwrite:
        raise FileExistsError(f"{out} already holds a run ({held[0]}): --resume continues it, "
                              "--overwrite replaces it")  # fmt: skip


def _clear_replaced_run(run: Path) -> None:
    """``overwrite``: the replaced run's model, summary and checkpoints go before training. A new
    run stopped before its first checkpoint left them beside its own configuration: ``--resume``
    then continued the old run's weights (or failed on their shapes), and ``model.pt``, which
    ``qfnet price`` loads, stayed the old run's until the new one ended."""
    for name in ("model.pt", "summary.json", "error_hist.png"):
        (run / name).unlink(missing_ok=True)
    for path in (run / "checkpoints").glob("*.pt"):  # last, best and epoch_XXXX files
        path.unlink()


def _build(
    domain: Domain, hidden: tuple[int, ...], activation: str, seed: int, base: str | None
) -> SurrogateNet:
    with torch.random.fork_rng(devices=[]):  # initial weights depend on the seed only
        torch.manual_seed(seed)
        return build_surrogate(domain, hidden=hidden, activation=activation, base=base)


@torch.no_grad()
def _errors_bp(net: SurrogateNet, x: torch.Tensor, iv: torch.Tensor) -> torch.Tensor:
    net.eval()
    device = net.in_mean.device
    pred = torch.cat([net(b.to(device)).cpu() for b in x.split(65_536)])
    return vol_error_bp(pred, iv)


def _error_summary(errors: torch.Tensor) -> dict[str, float]:
    e = errors.double()
    if e.numel() == 0:  # no test row inside the domain (a dataset of margin rows only)
        return {"n": 0, "mae_bp": math.nan, "median_bp": math.nan, "p99_bp": math.nan,
                "max_bp": math.nan}  # fmt: skip
    values = e.numpy()
    return {
        "n": int(e.numel()),
        "mae_bp": float(e.mean()),
        # numpy's median and quantile: torch.median is the lower of the two middle values (an
        # even test set reported 111.8 bp for a median of 114.5) and torch.quantile refuses
        # more than 2**24 values
        "median_bp": float(np.median(values)),
        "p99_bp": float(np.quantile(values, 0.99)),
        "max_bp": float(e.max()),
    }


def _plot_error_histogram(errors: torch.Tensor, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    e = errors.clamp_min(1e-4).numpy()
    ax.hist(e, bins=np.logspace(-4, math.log10(max(float(e.max()), 1e-3)) + 0.1, 60))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("absolute implied-vol error (bp)")
    ax.set_ylabel("test points")
    ax.set_title(f"surrogate test errors: mean {e.mean():.2f} bp, max {e.max():.1f} bp")
    fig.tight_layout()
    save_figure_atomically(fig, path, dpi=100)


def train_surrogate(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    epochs: int = 100,
    batch_size: int = 4096,
    lr: float = 2e-3,
    min_lr_ratio: float = 1e-3,
    seed: int = 0,
    resume: bool = False,
    hidden: Sequence[int] | None = None,
    activation: str | None = None,
    val_fraction: float = 0.02,
    test_fraction: float = 0.02,
    device: str = "auto",
    progress: bool = True,
    checkpoint_every_n_steps: int | None = None,
    callbacks: Sequence[Any] = (),
    init: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a surrogate on the dataset directory ``data``; write the run to ``out``.

    Adam with a cosine learning-rate decay from ``lr`` to ``lr * min_lr_ratio`` over ``epochs``,
    on the squared implied-vol error; the data are split into train/val/test at random
    (``seed``). The test errors reported are those of the test rows inside the domain (a
    dataset generated with a ``margin`` also has rows beyond it). ``resume=True`` continues
    ``out`` from its last checkpoint (with its architecture: ``hidden`` and ``activation``, if
    given, must be the run's; a new run takes :data:`DEFAULT_HIDDEN` and
    :data:`DEFAULT_ACTIVATION` for None); ``callbacks`` go to the Trainer.
    ``init`` (a surrogate file or run) starts from its weights and scalers: a fine-tuning run,
    typically with a smaller ``lr``; on the dataset the ``init`` surrogate was trained on (or
    on one of its generation seed and size: the same points), it must keep that run's ``seed``
    and split fractions (another split tests on rows it trained on); one of its generation seed
    and another size is refused. A new run into a directory that holds one needs
    ``overwrite=True`` (that run's model, summary and checkpoints are removed before training);
    a resumed one must keep its ``seed`` and split fractions.

    Returns:
        The summary written to ``out/summary.json``: ``test`` holds ``n, mae_bp, median_bp,
        p99_bp, max_bp`` (absolute implied-vol errors in bp), ``epochs`` the epochs trained
        (fewer than ``max_epochs``, the ``epochs`` asked for, where a callback stopped the run),
        plus row counts and settings. Empty on ranks other than 0 under torchrun.

    Examples:
        A two-epoch run on 64 points (far too small to be accurate), then the surrogate file
        of its last checkpoint (:func:`export_checkpoint`):

        >>> import tempfile
        >>> from pricing.datasets import generate
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     data = generate(f"{tmp}/ds", model="sabr", n=64, progress=False)
        ...     summary = train_surrogate(data, f"{tmp}/run", epochs=2, batch_size=32,
        ...                               hidden=(8,), progress=False, device="cpu")
        ...     ready = (Path(tmp) / "run" / "model.pt").is_file()
        ...     last = load_surrogate(export_checkpoint(f"{tmp}/run", which="last"))
        >>> summary["epochs"], sorted(summary["test"]), ready, last.domain.model
        (2, ['mae_bp', 'max_bp', 'median_bp', 'n', 'p99_bp'], True, 'sabr')
    """
    from qfnet.training import Trainer, TrainerConfig, resolve_device
    from qfnet.training.distributed import init_distributed

    run = Path(out)
    x, iv, domain, meta = load_training_tensors(data)
    start = load_surrogate(init) if init is not None else None
    base = None  # the model's default base vol
    if start is not None:  # fine-tuning: architecture, scalers and weights of the given surrogate
        if start.domain != domain:
            raise ValueError(f"--init surrogate domain differs from the dataset's: {init}")
        # its base vol too: its weights correct that base (another one was taken silently)
        hidden, activation, base = start.hidden, start.activation, start.base
    _check_fresh(run, resume, overwrite)
    if resume and not (run / "checkpoints" / "last.pt").is_file():  # a new run started quietly
        raise ValueError(f"{run}: no checkpoint to resume (checkpoints/last.pt); train without "
                         "--resume to start a run there")  # fmt: skip
    split = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    dataset = _dataset_identity(meta, len(iv))
    # epochs: the cosine schedule is planned over them (the Trainer's refusal named T_max)
    training = {"batch_size": batch_size, "lr": lr, "min_lr_ratio": min_lr_ratio, "epochs": epochs}
    train_idx, val_idx, test_idx = _split(len(iv), val_fraction, test_fraction, seed)
    rows = {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}
    if start is not None:
        _check_init_split(start.training_summary, init, data, dataset, split, rows)
    sampling = meta.get("sampling_domain")  # the box the points were drawn from (--margin)
    hidden, activation, base = _architecture(run, resume, hidden, activation, domain, sampling,
                                             split, dataset, training, base)  # fmt: skip
    net = _build(domain, hidden, activation, seed, base)
    if start is not None:
        net.load_state_dict(start.state_dict())
    else:
        net.fit_scalers(x[train_idx], iv[train_idx])
    config = TrainerConfig(
        max_epochs=epochs,
        batch_size=batch_size,
        optimizer="adam",
        lr=lr,
        scheduler="cosine",
        scheduler_kwargs={"T_max": epochs, "eta_min": lr * min_lr_ratio},
        seed=seed,
        run_dir=str(run),
        device=device,
        progress_bar=progress,
        checkpoint_every_n_steps=checkpoint_every_n_steps,
    )
    trainer = Trainer(
        net,
        loss=vol_loss_bp2,
        config=config,
        callbacks=list(callbacks),
        metrics={"mae_bp": vol_error_bp},
    )
    # The Trainer reuses this process group: its backend must follow the training device
    # (nccl for CUDA), as the Trainer's own would.
    ranks = init_distributed("auto", resolve_device(device))
    if len(val_idx) < ranks.world_size:  # refused on every rank: the ranks left without a row
        # failed alone ("validation/test data is empty") and the others hung in a collective
        held = f"{len(val_idx)} {'row' if len(val_idx) == 1 else 'rows'}"
        raise ValueError(f"the validation split holds {held}, fewer than the "
                         f"{ranks.world_size} processes that each validate a share: generate "
                         "more data or raise val_fraction")  # fmt: skip
    shard = {"rank": ranks.rank, "num_replicas": ranks.world_size}
    # Equal training shares keep the DDP ranks' steps in lockstep (a different permutation
    # leaves other rows out each epoch); validation counts every row once, in shares that may
    # differ by one row: the Trainer's val_loss is a mean weighted by the rows of each rank.
    train = _loader(x[train_idx], iv[train_idx], batch_size, shuffle=True, seed=seed,
                    equal_shares=True, **shard)  # fmt: skip
    val = _loader(x[val_idx], iv[val_idx], 65_536, shuffle=False, seed=seed, equal_shares=False,
                  **shard)  # fmt: skip
    if ranks.is_global_zero:
        run.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            _clear_replaced_run(run)
        arch = {"hidden": list(hidden), "activation": activation, "base": net.base,
                "domain": domain.to_dict(), "sampling_domain": sampling, "split": split,
                "dataset": dataset, "training": training}  # fmt: skip
        write_text_atomically(json.dumps(arch, indent=2), run / _ARCH_FILE)
    history = trainer.fit(train, val, resume=resume)
    if not ranks.is_global_zero:
        return {}
    net = net.cpu()
    x_test, iv_test = x[test_idx], iv[test_idx]
    inside = torch.as_tensor(domain.contains(dict(zip(domain.input_names, x_test.T, strict=True))))
    errors = _errors_bp(net, x_test[inside], iv_test[inside])  # the margin rows are left out
    summary = {
        "data": str(Path(data).resolve()),
        "engine": meta.get("engine"),
        "dataset": dataset,
        "split": split,
        "rows": {**rows, "dropped": meta["dropped_rows"]},
        "architecture": {"hidden": list(hidden), "activation": activation},
        # those trained (a callback may stop early): the requested count was recorded
        "epochs": len(history),
        "max_epochs": epochs,
        "lr": lr,
        "init": None if init is None else str(init),
        "seed": seed,
        "test": _error_summary(errors),
    }
    save_surrogate(net, run / "model.pt", training=summary)
    if errors.numel():
        _plot_error_histogram(errors, run / "error_hist.png")
    write_text_atomically(json.dumps(json_safe(summary), indent=2, allow_nan=False),
                          run / "summary.json")  # fmt: skip
    return summary


def export_checkpoint(
    run: str | os.PathLike[str], *, which: str = "best", out: str | os.PathLike[str] | None = None
) -> Path:
    """Write the surrogate file of ``RUN/checkpoints/{best,last}.pt`` (to ``RUN/model_<which>.pt``).

    Serves runs stopped before the end (``model.pt`` is written when training completes) and
    picking the best-validation weights instead of the final ones (a complete example is in
    :func:`train_surrogate`). The file's training summary names the checkpoint's ``epoch``,
    0-based as in ``metrics.csv``, whether it was written at that epoch's end
    (``epoch_complete``; a mid-epoch ``last.pt`` is partway through it), and the run's ``dataset``
    and ``split`` (a fine-tuning run from the file on that dataset must keep the split, as from
    the run itself).

    Raises:
        FileNotFoundError: ``run`` holds no surrogate run.
        qfnet.training.CheckpointError: the checkpoint is missing, cut or damaged.
        qfnet.training.checkpoint.ModelFileError: the checkpoint does not fit the run's
            configuration (other layer widths, an unknown activation: an edited file).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     export_checkpoint(tmp)
        Traceback (most recent call last):
        ...
        FileNotFoundError: ... is not a surrogate run (no ...)
    """
    from pricing.datasets import HESTON_DOMAIN
    from qfnet.training import load_checkpoint

    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    root = Path(run)
    arch_path = root / _ARCH_FILE
    if not arch_path.is_file():
        raise FileNotFoundError(f"{root} is not a surrogate run (no {_ARCH_FILE})")
    arch = _read_architecture(arch_path)
    domain = Domain.from_dict(arch["domain"]) if "domain" in arch else HESTON_DOMAIN
    checkpoint = root / "checkpoints" / f"{which}.pt"
    state = load_checkpoint(checkpoint)
    try:  # torch's size mismatch, or an unknown activation, named neither file
        net = build_surrogate(domain, hidden=arch["hidden"], activation=arch["activation"],
                              base=arch.get("base"))  # fmt: skip
        net.load_state_dict(state["model"])
        loop = state["loop"]
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(checkpoint, f"{checkpoint} does not fit the run's {arch_path.name} "
                             f"(an edited file?): {damage_summary(exc)}") from exc  # fmt: skip
    # The loop position after an epoch's end is the next epoch: best.pt of metrics.csv's epoch 5
    # was labelled epoch 6, whose validation loss is another one.
    complete = loop["batch_in_epoch"] == 0 and loop["epoch"] > 0
    info = {
        "checkpoint": which,
        "epoch": loop["epoch"] - 1 if complete else loop["epoch"],
        "epoch_complete": complete,
        "global_step": loop["global_step"],
        # the run's dataset and split: fine-tuning from this file on that dataset with another
        # --seed tested on rows it had trained on (the check had nothing to compare)
        **{key: arch[key] for key in ("dataset", "split") if key in arch},
    }
    return save_surrogate(net, out or root / f"model_{which}.pt", training=info)
