"""DataLoader worker seeding for albumentations pipelines.

albumentations 2.0.8 keeps its own RNG inside each ``Compose``: with DataLoader workers, every worker
would repeat the same augmentations every epoch, seeded or not (protocols.md). :func:`seed_worker`
reseeds the dataset's transform from the worker's torch seed, which Lightning/torch derive from the
global seed, the epoch-independent base seed and the worker id, so runs stay reproducible.
"""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info


def seed_transform(transform, seed: int) -> None:
    """Reseed an albumentations ``Compose`` (no-op for ``None`` or transforms without an RNG)."""
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed % 2**32)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: reseed ``dataset.transform`` from this worker's torch seed.

    Looks through ``torch.utils.data.Subset``/wrappers via their ``dataset`` attribute.
    """
    info = get_worker_info()
    seed = info.seed if info is not None else torch.initial_seed()
    dataset = info.dataset if info is not None else None
    while dataset is not None:
        seed_transform(getattr(dataset, "transform", None), seed)
        dataset = getattr(dataset, "dataset", None)
