"""FitLogInterval: ``log_every_n_steps`` no longer than an epoch, so small data logs every epoch."""

from __future__ import annotations

import logging
import math

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


class FitLogInterval(Callback):
    """At the start of ``fit``, lower ``trainer.log_every_n_steps`` to the number of training batches of one
    epoch when an epoch is shorter than it.

    The shipped configs log every 5-50 steps, sized for their data; the same config on a small dataset (a
    tiny demo run, a few dozen images to fine-tune on) has epochs of fewer steps than that. Lightning then
    warns that "the number of training batches (N) is smaller than the logging interval", and, for a run
    shorter than the interval, ``metrics.csv`` gets no training row at all. With this callback such a run
    logs (and :class:`~cbsa_dense.callbacks.LogProgress` prints a line) every epoch instead: the interval a
    user would have set for that data. A longer epoch keeps the configured interval.

    The tasks add it themselves (``configure_callbacks``); it reads the length of the datamodule's training
    loader once (per process under DDP, ``limit_train_batches`` applied), and does nothing without a
    datamodule, for an unsized loader, or outside ``fit``.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.fast_dev_run:
            return
        batches = _epoch_batches(trainer)
        if batches is not None and 0 < batches < trainer.log_every_n_steps:
            log.debug("log_every_n_steps %d -> %d (training batches per epoch)", trainer.log_every_n_steps, batches)
            trainer.log_every_n_steps = int(batches)


def _epoch_batches(trainer: Trainer) -> int | None:
    """Training batches per epoch and process, as Lightning will count them; ``None`` when unknown."""
    datamodule = trainer.datamodule
    if datamodule is None:
        return None
    try:
        loader = datamodule.train_dataloader()
        batches = len(loader)
    except Exception:          # no training loader, an unsized one, one that needs what fit sets up later
        return None
    sampler = getattr(loader, "sampler", None)
    world = trainer.world_size
    if world > 1 and not isinstance(sampler, DistributedSampler):
        batches = math.ceil(batches / world)     # Lightning gives each process its share of a plain sampler
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    return batches
