"""Training loaders whose order and augmentations are a pure function of (seed, epoch, position).

That makes a run resumable mid-epoch with bit-identical results (see
:class:`~cbsa_dense.callbacks.ExactResume`): the sampler's permutation depends only on the seed and
the epoch, it can start at any position, and each sample's augmentation RNG is seeded from
(seed, epoch, index) instead of a stream that a restart would lose.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cbsa_dense.data.seeding import seed_transform, seed_worker


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
