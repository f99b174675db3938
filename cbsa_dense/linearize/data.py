"""Unlabelled image batches for attention transfer: the user's own training crops, seeded."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from cbsa_dense.data.loaders import loader_passes, set_loader_epoch
from cbsa_dense.errors import ConfigError

#: Epoch number of the held-out pass: its crops and order differ from those of the training passes.
HOLDOUT_EPOCH = 10_000


def _images(batch) -> torch.Tensor:
    images = batch.get("image") if isinstance(batch, dict) else None
    if isinstance(images, torch.Tensor):          # the collates stack images whenever their sizes agree
        return images
    raise ConfigError("attention transfer needs a training loader whose batches hold same-size 'image' tensors "
                      f"(a segmentation or COCO datamodule of this package); got a {type(batch).__name__} batch")


def holdout_batches(loader: DataLoader, count: int) -> list[torch.Tensor]:
    """``count`` image batches of a separate pass over ``loader`` (other crops and order than training)."""
    set_loader_epoch(loader, HOLDOUT_EPOCH)
    batches = []
    for batch in loader:
        batches.append(_images(batch))
        if len(batches) >= count:
            break
    if not batches:
        raise ConfigError("attention transfer: the training loader yields no batch (no training images?)")
    return batches


def training_batches(loader: DataLoader) -> Iterator[torch.Tensor]:
    """Image batches of passes 0, 1, 2, ... over ``loader``, endlessly (each pass seeded by its number)."""
    try:
        for batch in loader_passes(loader):
            yield _images(batch)
    except ValueError as err:
        raise ConfigError(f"attention transfer: {err}") from None
