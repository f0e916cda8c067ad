"""Data splits and DataLoaders whose order depends only on ``(seed, epoch)``."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    Sampler,
    Subset,
    TensorDataset,
)

from qfnet.training.checkpoint import get_rng_state, set_rng_state

__all__ = [
    "DataSource",
    "TrainLoader",
    "check_indexable",
    "eval_loader",
    "known_length",
    "off_cpu",
    "split_dataset",
    "tensor_backed",
]

DataSource = Dataset | DataLoader | torch.Tensor


def split_dataset(
    dataset: Dataset | torch.Tensor, fractions: Sequence[float], *, seed: int = 0
) -> tuple[Subset, ...]:
    """Split a dataset at random into parts of the given fractions (e.g. train/val/test).

    The sizes are ``floor(f * n)`` with the remainder given to the first parts, one sample each;
    the permutation comes from a private generator seeded with ``seed``.

    Args:
        dataset: Any map-style dataset (or a tensor, split along its first dimension).
        fractions: Non-negative fractions summing to 1 (within 1e-9).
        seed: Seed of the permutation.

    Returns:
        One :class:`torch.utils.data.Subset` per fraction.

    Raises:
        ValueError: If a fraction is negative or they do not sum to 1.

    Examples:
        >>> train, val, test = split_dataset(torch.arange(10.0), [0.6, 0.2, 0.2], seed=1)
        >>> len(train), len(val), len(test)
        (6, 2, 2)
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(not f >= 0 for f in fractions):
        raise ValueError(f"split_dataset: fractions must be non-negative, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split_dataset: fractions must sum to 1, got sum {sum(fractions)}")
    n = len(dataset)
    sizes = [math.floor(f * n) for f in fractions]
    for i in range(n - sum(sizes)):
        sizes[i % len(sizes)] += 1
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator).tolist()
    parts, start = [], 0
    for size in sizes:
        parts.append(Subset(dataset, order[start : start + size]))
        start += size
    return tuple(parts)


class _EpochBatches(Sampler):
    """Batches of a ``DistributedSampler``'s epoch order, as index tensors (or lists).

    The order of an epoch is taken from the sampler in one piece (so it is exactly the
    ``DistributedSampler`` order for ``(seed, epoch)``) and cut into batches by slicing; the
    first ``skip`` batches of the next epoch are left out (mid-epoch resume).
    """

    def __init__(self, base: Sampler, batch_size: int, drop_last: bool, as_list: bool) -> None:
        self.base, self.batch_size = base, batch_size
        self.drop_last, self.as_list = drop_last, as_list
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        order = _epoch_order(self.base)  # (N_rank,)
        skip, self.skip = self.skip, 0
        size = self.batch_size
        stop = len(order) - len(order) % size if self.drop_last else len(order)
        for start in range(skip * size, stop, size):
            batch = order[start : start + size]
            yield batch.tolist() if self.as_list else batch

    def __len__(self) -> int:
        n = len(self.base)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def _epoch_order(sampler: Sampler) -> torch.Tensor:
    """The indices ``sampler`` yields this epoch, as one tensor.

    For a ``DistributedSampler`` the same computation as its ``__iter__`` (permutation from
    ``seed + epoch``, padding or truncation to a multiple of the world size, rank's stride)
    done on tensors instead of Python lists.
    """
    if not isinstance(sampler, DistributedSampler):
        return torch.as_tensor(list(sampler), dtype=torch.long)
    n = len(sampler.dataset)
    if sampler.shuffle:
        generator = torch.Generator().manual_seed(sampler.seed + sampler.epoch)
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    total = sampler.total_size
    if sampler.drop_last:
        order = order[:total]
    elif total > n:
        order = torch.cat([order, order.repeat(-(-(total - n) // n))[: total - n]])
    return order[sampler.rank : total : sampler.num_replicas]


class _ShardSampler(Sampler[int]):
    """Evaluation order: rank ``r`` of ``w`` takes indices ``r, r + w, ...`` (no padding)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def tensor_backed(data: Any) -> bool:
    """True for a tensor, a ``TensorDataset`` or (nested) ``Subset`` of them.

    Examples:
        >>> x = torch.zeros(4, 2)
        >>> tensor_backed(x), tensor_backed(Subset(TensorDataset(x), [0, 2])), tensor_backed([x])
        (True, True, False)
    """
    if isinstance(data, (torch.Tensor, TensorDataset)):
        return True
    return isinstance(data, Subset) and tensor_backed(data.dataset)


def off_cpu(data: Any) -> bool:
    """True for tensor-backed data (see :func:`tensor_backed`) held on another device than the
    CPU: its batches cannot be pinned (``pin_memory`` raises on a CUDA tensor).

    Examples:
        >>> off_cpu(TensorDataset(torch.zeros(4, 2, device="meta"))), off_cpu(torch.zeros(4))
        (True, False)
    """
    while isinstance(data, Subset):
        data = data.dataset
    tensors = (data,) if isinstance(data, torch.Tensor) else getattr(data, "tensors", ())
    return isinstance(data, (torch.Tensor, TensorDataset)) and any(
        t.device.type != "cpu" for t in tensors
    )


def known_length(data: Any) -> int | None:
    """``len(data)``, or ``None`` for data without a length (a DataLoader over an
    ``IterableDataset`` has ``__len__`` but raises ``TypeError``).

    Examples:
        >>> class Stream(IterableDataset):
        ...     def __iter__(self):
        ...         return iter(range(3))
        >>> known_length(torch.zeros(4, 2)), known_length(DataLoader(Stream()))
        (4, None)
    """
    try:
        return len(data)
    except TypeError:
        return None


def check_indexable(data: Any, name: str) -> None:
    """Refuse an ``IterableDataset`` passed as such: it has no indices to batch and shard by.

    Examples:
        >>> class Stream(IterableDataset):
        ...     def __iter__(self):
        ...         return iter(range(3))
        >>> check_indexable(Stream(), "train_data")
        Traceback (most recent call last):
        ...
        TypeError: train_data: an IterableDataset (Stream) has no indices to batch ...
    """
    if isinstance(data, IterableDataset):
        raise TypeError(
            f"{name}: an IterableDataset ({type(data).__name__}) has no indices to batch and "
            "shard; pass DataLoader(dataset, batch_size=...), which is used as given (under "
            "DDP each process must then yield its own part of the stream)"
        )


class _BatchFetch(Dataset):
    """Items are whole batches: an index tensor gives the stacked batch by one tensor index.

    Equal to per-sample fetching followed by ``default_collate`` for tensor-backed data
    (a tensor, a ``TensorDataset`` or nested ``Subset`` of them), without a loop per sample.
    """

    def __init__(self, data: Any) -> None:
        self.length = len(data)
        index: torch.Tensor | None = None
        while isinstance(data, Subset):
            own = torch.as_tensor(data.indices, dtype=torch.long)
            index = own if index is None else own[index]
            data = data.dataset
        self.data, self.index = data, index

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, batch: torch.Tensor) -> Any:
        if self.index is not None:
            batch = self.index[batch]
        if isinstance(self.data, torch.Tensor):
            return self.data[batch]
        return [t[batch] for t in self.data.tensors]


class _TensorBatches:
    """A loader for tensor-backed data on the main process: index, fetch, yield.

    What a ``DataLoader`` without workers or pinned memory would yield for the same sampler,
    minus its per-batch bookkeeping (which costs as much as a small model's step).
    """

    def __init__(self, fetch: _BatchFetch, sampler: _EpochBatches) -> None:
        self.fetch, self.sampler = fetch, sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        for index in self.sampler:
            yield self.fetch[index]


def _loader(
    data: Any, base: Sampler, batch_size: int, drop_last: bool, **kwargs: Any
) -> tuple[DataLoader | _TensorBatches, _EpochBatches]:
    if tensor_backed(data):
        sampler = _EpochBatches(base, batch_size, drop_last, as_list=False)
        if not kwargs.get("num_workers") and not kwargs.get("pin_memory"):
            return _TensorBatches(_BatchFetch(data), sampler), sampler
        loader = DataLoader(_BatchFetch(data), sampler=sampler, batch_size=None, **kwargs)
    else:
        sampler = _EpochBatches(base, batch_size, drop_last, as_list=True)
        loader = DataLoader(data, batch_sampler=sampler, **kwargs)
    return loader, sampler


class TrainLoader:
    """A training DataLoader plus the means to position it at ``(epoch, batch)``.

    Built from a Dataset (or tensor), the order is ``DistributedSampler``'s: ``randperm(n)``
    from a generator seeded with ``seed + epoch``, sharded under DDP, so any position is
    reached without replaying the data. A user DataLoader gets ``set_epoch`` (on its sampler,
    batch sampler and the batch sampler's sampler, where they have it), its generator's state
    at the epoch start restored on resume, and its first batches skipped.

    Examples:
        >>> x = torch.arange(10.0).unsqueeze(1)
        >>> loader = TrainLoader(TensorDataset(x), batch_size=4, shuffle=True, drop_last=False,
        ...                      seed=0, rank=0, world_size=1, loader_kwargs={})
        >>> epoch = [b[0].flatten().tolist() for b in loader.epoch_iter(0)]
        >>> len(loader), [len(b) for b in epoch], sorted(sum(epoch, [])) == x.flatten().tolist()
        (3, [4, 4, 2], True)
        >>> [b[0].flatten().tolist() for b in loader.epoch_iter(0, start_batch=2)] == epoch[2:]
        True
    """

    def __init__(
        self,
        data: DataSource,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        rank: int,
        world_size: int,
        loader_kwargs: dict[str, Any],
    ) -> None:
        self.seed = seed
        self.generator = torch.Generator()
        self._sampler: _EpochBatches | None = None
        self._epoch_start_state: torch.Tensor | None = None
        self.pending_generator_state: torch.Tensor | None = None
        if isinstance(data, DataLoader):
            self.loader = data
            return
        base = DistributedSampler(
            data, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self.loader, self._sampler = _loader(
            data, base, batch_size, drop_last, generator=self.generator, **loader_kwargs
        )

    def __len__(self) -> int:
        return len(self.loader)

    def epoch_iter(self, epoch: int, start_batch: int = 0) -> Iterator[Any]:
        """Iterate over the batches of ``epoch`` from batch ``start_batch`` on."""
        self.generator.manual_seed(self.seed + epoch)
        for sampler in self._epoch_samplers():
            sampler.set_epoch(epoch)
        if self._sampler is not None:
            self._sampler.skip = start_batch
            return iter(self.loader)
        generator = getattr(self.loader, "generator", None)
        if generator is not None:
            if self.pending_generator_state is not None:
                generator.set_state(self.pending_generator_state)
                self.pending_generator_state = None
            self._epoch_start_state = generator.get_state()
        # Mid-epoch, the global RNGs hold the checkpoint's states, which already count the
        # draws of the batches done: iter() drawing its base seed from torch's (a loader
        # without a generator) and a Dataset drawing as the skipped batches are fetched again
        # shifted every later dropout mask of the resumed run.
        resumed = get_rng_state() if start_batch else None
        iterator = iter(self.loader)
        for _ in range(start_batch):
            next(iterator)
        if resumed is not None:
            set_rng_state(resumed)
        return iterator

    def _epoch_samplers(self) -> list[Any]:
        """The samplers with ``set_epoch``: a user DataLoader's sampler, its batch sampler and
        the batch sampler's sampler (``batch_sampler=BatchSampler(DistributedSampler(...))``
        repeated its first epoch's order in every epoch when only ``loader.sampler`` was set)."""
        if self._sampler is not None:
            return [self._sampler]
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        found = (self.loader.sampler, batch_sampler, getattr(batch_sampler, "sampler", None))
        unique = {id(s): s for s in found if hasattr(s, "set_epoch")}
        return list(unique.values())

    def generator_state(self, at_epoch_end: bool) -> torch.Tensor | None:
        """State of a user DataLoader's generator to restore on resume (``None`` if unused).

        Mid-epoch it is the state at the start of the epoch (the epoch is replayed and its
        first batches skipped); at the end of an epoch, the current state.
        """
        generator = getattr(self.loader, "generator", None)
        if self._sampler is not None or generator is None:
            return None
        return generator.get_state() if at_epoch_end else self._epoch_start_state


def eval_loader(
    data: DataSource, *, batch_size: int, rank: int, world_size: int, loader_kwargs: dict
) -> DataLoader | _TensorBatches:
    """A sequential loader, sharded without padding across ranks (each sample counted once).

    Examples:
        >>> data = TensorDataset(torch.arange(10.0))
        >>> [b[0].tolist() for b in eval_loader(data, batch_size=4, rank=0, world_size=1,
        ...                                      loader_kwargs={})]
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
        >>> [b[0].tolist() for b in eval_loader(data, batch_size=4, rank=1, world_size=2,
        ...                                      loader_kwargs={})]  # the odd samples
        [[1.0, 3.0, 5.0, 7.0], [9.0]]
    """
    if isinstance(data, DataLoader):
        return data
    base = _ShardSampler(len(data), rank, world_size)
    return _loader(data, base, batch_size, False, **loader_kwargs)[0]
