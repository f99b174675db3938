"""Training loaders whose order and augmentations are a pure function of (seed, epoch, position), and
evaluation loaders that shard over DDP ranks without counting any image twice.

Training: a run is resumable mid-epoch with bit-identical results (see
:class:`~cbsa_dense.callbacks.ExactResume`): the sampler's permutation depends only on the seed and
the epoch, it can start at any position, and each sample's augmentation RNG is seeded from
(seed, epoch, index) instead of a stream that a restart would lose.

Evaluation (:func:`eval_loader`): under DDP, Lightning would insert a ``DistributedSampler`` that pads the
ranks' shares to equal length by repeating the first images, so a dataset-level sum (mIoU's confusion
matrix) would count those images twice. :class:`PaddedEvalSampler` keeps the equal shares (every rank runs
the same number of steps, so no collective can hang) but marks the repeats: their samples carry
``PADDING_KEY: True`` and the task leaves them out of its metrics.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sized

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cbsa_dense.data.seeding import seed_transform, seed_worker

PADDING_KEY = "padding"
"""Sample key of :class:`MarkPadding`: ``True`` for a repeat that only evens out the DDP ranks' shares."""


class ResumableSampler(DistributedSampler):
    """Epoch-seeded random order (``seed + epoch``), sharded over DDP ranks, that can start mid-epoch.

    A ``DistributedSampler`` (so Lightning uses it as is under DDP instead of wrapping it) that detects
    the world size and rank itself, forwards ``set_epoch`` to a dataset that has one, and skips the
    first ``start`` samples of its next pass (set by :class:`~cbsa_dense.callbacks.ExactResume`).

    Args:
        dataset: the (sized) dataset.
        seed: base seed (the run's ``seed_everything`` value is a good choice).
        shuffle: permute (training) or keep order.
        num_replicas: world size (default: from ``torch.distributed``, else 1).
        rank: this process's rank (default: from ``torch.distributed``, else 0).
    """

    def __init__(self, dataset: Sized, seed: int = 0, shuffle: bool = True, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if distributed else 1
        if rank is None:
            rank = dist.get_rank() if distributed else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start."""
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0                  # a resume offset applies to one pass only
        return iter(list(super().__iter__())[start:])


class SeededAugmentation(Dataset):
    """Wrap a dataset whose ``transform`` is an albumentations ``Compose``: before each item, reseed the
    transform from (seed, epoch, index), so augmentations do not depend on worker count or restarts."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed_transform(getattr(self.dataset, "transform", None),
                       (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        return self.dataset[index]

    def __getattr__(self, name: str):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity set where the OS has one (a container's or ``taskset``'s
    limit), else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):                # macOS, Windows
        return max(1, os.cpu_count() or 1)


def worker_count(num_workers: int) -> int:
    """``num_workers`` capped at :func:`available_cpus`.

    More loader workers than CPUs do not load faster: they take turns on the same cores (torch warns "This
    DataLoader will create N worker processes ... suggested max number of worker in current system is M").
    So a config's ``num_workers: 8`` on a 2-CPU machine gets 2 workers, silently: what it would get anyway, and
    the same config serves the big and the small machine.
    """
    return min(int(num_workers), available_cpus())


def run_seed() -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def train_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, seed: int | None = None,
                 collate_fn: Callable | None = None, drop_last: bool = True, pin_memory: bool = False) -> DataLoader:
    """A training DataLoader with a :class:`ResumableSampler` and per-sample seeded augmentation.

    Under DDP each rank reads its shard of the same epoch order (the sampler is a ``DistributedSampler``).
    ``seed=None`` takes :func:`run_seed`.
    """
    seed = run_seed() if seed is None else seed
    seeded = SeededAugmentation(dataset, seed)
    return DataLoader(seeded, batch_size=batch_size, sampler=ResumableSampler(seeded, seed),
                      num_workers=num_workers, collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
                      worker_init_fn=seed_worker, persistent_workers=False)


def distributed_world() -> tuple[int, int]:
    """(world size, rank) of the initialized ``torch.distributed`` process group, else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class PaddedEvalSampler(DistributedSampler):
    """In-order evaluation shard of one DDP rank, padded like Lightning's but with the padding marked.

    Rank ``r`` of ``W`` reads positions ``r, r + W, ...`` of ``0, 1, ..., N - 1`` followed by repeats of
    ``0, 1, ...`` up to a multiple of ``W`` (``torch``'s ``DistributedSampler`` order, ``shuffle=False``): the
    same number of samples, hence of steps, on every rank, even when ``N < W``. It yields ``(index, repeat)``
    pairs, which :class:`MarkPadding` turns into samples with ``PADDING_KEY = repeat``.

    Args:
        dataset: the (sized) dataset.
        num_replicas: world size (default: from ``torch.distributed``, else 1).
        rank: this process's rank (default: from ``torch.distributed``, else 0).
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None) -> None:
        world, this_rank = distributed_world()
        super().__init__(dataset, num_replicas=world if num_replicas is None else num_replicas,
                         rank=this_rank if rank is None else rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        size = len(self.dataset)
        order = list(range(size))
        if size:
            order += (order * math.ceil(self.total_size / size))[:self.total_size - size]
        return iter((index, position >= size)
                    for position, index in enumerate(order) if position % self.num_replicas == self.rank)


class MarkPadding(Dataset):
    """Wrap a dataset of dict samples: item ``(index, repeat)`` (from :class:`PaddedEvalSampler`) is
    ``dataset[index]`` plus ``PADDING_KEY: repeat``; a plain ``index`` is not a repeat."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, bool]) -> dict:
        index, repeat = key if isinstance(key, tuple) else (key, False)
        return {**self.dataset[index], PADDING_KEY: bool(repeat)}

    def __getattr__(self, name: str):
        # no dunders: a forwarded ``__getitems__`` would make the DataLoader bypass ``__getitem__``
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, collate_fn: Callable | None = None,
                pin_memory: bool = False) -> DataLoader:
    """An in-order validation/test DataLoader that scores every image exactly once under DDP.

    One process: a plain sequential loader (unchanged). Under DDP (an initialized process group with more
    than one rank): :class:`PaddedEvalSampler` over :class:`MarkPadding` (a ``DistributedSampler``, which
    Lightning uses as is); each rank runs the same number of steps and the repeats that even out the last
    round carry ``PADDING_KEY: True`` so the metrics skip them.
    """
    kwargs = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin_memory,
                  worker_init_fn=seed_worker, persistent_workers=num_workers > 0)
    if distributed_world()[0] > 1:
        return DataLoader(MarkPadding(dataset), sampler=PaddedEvalSampler(dataset), **kwargs)
    return DataLoader(dataset, shuffle=False, **kwargs)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Seed ``loader``'s next pass with ``epoch`` (through its sampler's ``set_epoch``, when it has one)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def loader_passes(loader: DataLoader, first_epoch: int = 0) -> Iterator:
    """Batches of passes ``first_epoch``, ``first_epoch + 1``, ... over ``loader``, endlessly (each pass seeded by
    its number through the sampler's ``set_epoch``): work before training that needs more batches than an epoch
    holds (attention transfer, head warm-up). A loader that yields no batch is a ``ValueError``."""
    epoch = first_epoch
    while True:
        set_loader_epoch(loader, epoch)
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the training loader yields no batch (no training images?)")
        epoch += 1
