"""Training loaders whose order and augmentations are a pure function of (seed, epoch, position).

That makes a run resumable mid-epoch with bit-identical results (see
:class:`~cbsa_dense.callbacks.ExactResume`): the sampler's permutation depends only on the seed and
the epoch, it can start at any position, and each sample's augmentation RNG is seeded from
(seed, epoch, index) instead of a stream that a restart would lose.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cbsa_dense.data.seeding import seed_transform, seed_worker


class ResumableSampler(Sampler[int]):
    """Epoch-seeded random permutation that can start mid-epoch.

    Args:
        num_samples: dataset length.
        seed: base seed (the run's ``seed_everything`` value is a good choice).
        shuffle: permute (training) or keep order.
    """

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at every epoch start."""
        self.epoch = epoch

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0                  # a resume offset applies to one pass only
        return iter(self.order()[start:])

    def __len__(self) -> int:
        return self.num_samples


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


class _EpochAwareSampler(ResumableSampler):
    """Forwards ``set_epoch`` to the seeded dataset too (Lightning only tells the sampler)."""

    def __init__(self, dataset: SeededAugmentation, seed: int, shuffle: bool) -> None:
        super().__init__(len(dataset), seed, shuffle)
        self.dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


def run_seed() -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def train_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, seed: int | None = None,
                 collate_fn: Callable | None = None, drop_last: bool = True, pin_memory: bool = False) -> DataLoader:
    """A training DataLoader with a :class:`ResumableSampler` and per-sample seeded augmentation.

    Under DDP, Lightning wraps the sampler in a ``DistributedSamplerWrapper`` (each rank takes its share
    of this sampler's order). ``seed=None`` takes :func:`run_seed`.
    """
    seed = run_seed() if seed is None else seed
    seeded = SeededAugmentation(dataset, seed)
    return DataLoader(seeded, batch_size=batch_size, sampler=_EpochAwareSampler(seeded, seed, shuffle=True),
                      num_workers=num_workers, collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
                      worker_init_fn=seed_worker, persistent_workers=False)
