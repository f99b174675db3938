"""Bit-exact mid-epoch resumption of training (after a crash or a SIGKILL)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from cbsa_dense.data.loaders import ResumableSampler


class ExactResume(Callback):
    """Record how far into the epoch training got, and restart the sampler there on resume.

    Works with loaders built by :func:`cbsa_dense.data.loaders.train_loader` (epoch-seeded order,
    per-sample seeded augmentation), in single-process and DDP runs (each rank resumes its own shard). The callback's state (epoch, samples consumed, torch RNG state
    for dropout/drop-path) goes into every checkpoint; it is measured at the end of each training
    batch, so batches Lightning prefetched but did not train on are not counted. Combine with a
    ``ModelCheckpoint(every_n_train_steps=..., save_last=True)`` for frequent restart points.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.samples_done = 0
        self.rng_state: torch.Tensor | None = None
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def _sampler(trainer: Trainer) -> ResumableSampler | None:
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        return sampler if isinstance(sampler, ResumableSampler) else None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        loader = trainer.train_dataloader
        self.epoch = trainer.current_epoch
        self.samples_done = (batch_idx + 1) * int(getattr(loader, "batch_size", 1) or 1)
        self.rng_state = torch.get_rng_state()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning warns that a mid-epoch checkpoint with a plain dataloader resumes unreliably: this
        # callback is what makes it exact, so the warning is wrong here.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pending, self._pending = self._pending, None
        if not pending or pending["epoch"] != trainer.current_epoch:
            return
        sampler = self._sampler(trainer)
        if sampler is None:
            raise RuntimeError("ExactResume needs a training loader built with cbsa_dense.data.loaders.train_loader "
                               "(a ResumableSampler); this run's loader cannot resume mid-epoch exactly")
        loader = trainer.train_dataloader
        if pending["samples_done"] >= len(loader) * int(loader.batch_size or 1):
            return                                            # the checkpoint closed its epoch
        sampler.start = pending["samples_done"]
        if pending["rng_state"] is not None:
            torch.set_rng_state(pending["rng_state"])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "samples_done": self.samples_done, "rng_state": self.rng_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
