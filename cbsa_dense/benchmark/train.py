"""``benchmark train``: steady-state training speed of a built model and datamodule, and of its data loader alone.

The command line (``cbsa-dense benchmark train --config CFG``, :mod:`cbsa_dense.cli.commands.benchmark`) parses
the config as ``cbsa-dense fit --config CFG`` would and hands the built model, datamodule and the config's
trainer settings to :func:`bench_train`; this module builds nothing from configs and imports nothing from the
command line. Training runs in a separate, quiet ``Trainer`` (same accelerator, precision, gradient clipping
and accumulation as the config's: :func:`step_settings`; no validation, logging or checkpoints) for
``warmup_steps + steps`` optimizer steps; the steps after the warm-up are timed end to end (data loading
included).

Record::

    {"config": path, "steps": N, "batch_size": B, "train_steps_per_s": .., "train_img_per_s": ..,
     "data_img_per_s": .., "loader_bound": bool, "precision": "32-true", "device": "cpu"}

``data_img_per_s``: images/s of iterating the training dataloader alone (after ``warmup_steps``
batches); ``loader_bound``: the loader alone is less than 1.2x faster than training, i.e. the data
pipeline limits (or nearly limits) the training speed.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping

import torch
from lightning.pytorch import Callback, Trainer

#: Trainer settings of the config that change what a training step costs.
_STEP_SETTINGS = ("accelerator", "precision", "gradient_clip_val", "gradient_clip_algorithm",
                  "accumulate_grad_batches")


def count_images(batch: object) -> int:
    """Number of images in a batch: a (B, C, H, W) tensor, a dict with ``image``/``images``, or a list."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "img", "inputs"):
            if key in batch:
                return count_images(batch[key])
        raise ValueError(f"cannot count images in a batch dict with keys {sorted(batch)}")
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, torch.Tensor) and first.dim() == 4:
            return first.shape[0]
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], torch.Tensor):
            return len(first)                        # (images, targets) with images a list of tensors
        return len(batch)
    raise ValueError(f"cannot count images in a batch of type {type(batch).__name__}")


class _StepTimer(Callback):
    """Times the optimizer-step batches after ``warmup`` of them."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.images = 0
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.batches == self.warmup:
            self.start = time.perf_counter()
        elif self.batches > self.warmup:
            self.images += count_images(batch)
            self.end = time.perf_counter()


def step_settings(trainer_config: Mapping | None) -> dict:
    """The settings of a config's trainer section that change what a training step costs (unset ones left out)."""
    trainer_config = trainer_config or {}
    return {k: trainer_config[k] for k in _STEP_SETTINGS if trainer_config.get(k) is not None}


def check_steps(steps: int, warmup_steps: int) -> None:
    """ValueError unless ``steps >= 1`` and ``warmup_steps >= 1``."""
    if steps < 1 or warmup_steps < 1:
        raise ValueError(f"bench_train needs steps >= 1 and warmup_steps >= 1, got {steps}, {warmup_steps}")


def data_images_per_s(datamodule, batches: int, warmup: int) -> float:
    """Images/s of iterating the datamodule's training loader alone (after ``warmup`` batches)."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    start, images, seen = None, 0, 0
    for batch in datamodule.train_dataloader():
        seen += 1
        if seen == warmup:
            start = time.perf_counter()
        elif seen > warmup:
            images += count_images(batch)
        if seen >= warmup + batches:
            break
    if start is None or images == 0:
        raise ValueError(f"the training loader yielded only {seen} batches; need more than warmup={warmup}")
    return images / (time.perf_counter() - start)


def bench_train(model, datamodule, steps: int = 20, warmup_steps: int = 3, data_batches: int | None = None,
                trainer_settings: Mapping | None = None, config: str = "") -> dict:
    """Run the training benchmark of a built ``model`` (a LightningModule) and ``datamodule``; returns one
    record (see module doc). ``trainer_settings``: the config's :func:`step_settings`; ``config``: the record's
    name for what was run (the config file)."""
    check_steps(steps, warmup_steps)
    settings = dict(trainer_settings or {})
    data_rate = data_images_per_s(datamodule, data_batches or steps, warmup_steps)
    timer = _StepTimer(warmup_steps)
    accumulate = int(settings.get("accumulate_grad_batches", 1))
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(devices=1, max_steps=warmup_steps + steps, limit_val_batches=0, num_sanity_val_steps=0,
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, callbacks=[timer], default_root_dir=root,
                          **{k: v for k, v in settings.items() if k != "accumulate_grad_batches"},
                          accumulate_grad_batches=accumulate)
        trainer.fit(model, datamodule=datamodule)
    if timer.start is None or timer.end is None:
        raise ValueError(f"training stopped after {timer.batches} batches; the loader is too short for "
                         f"warmup_steps={warmup_steps} + steps={steps}")
    elapsed = timer.end - timer.start
    timed_batches = timer.batches - warmup_steps
    train_rate = timer.images / elapsed
    return {"config": str(config), "steps": timed_batches // accumulate,
            "batch_size": timer.images // max(timed_batches, 1),
            "train_steps_per_s": round(timed_batches / accumulate / elapsed, 4),
            "train_img_per_s": round(train_rate, 3), "data_img_per_s": round(data_rate, 3),
            "loader_bound": bool(data_rate < 1.2 * train_rate),
            "precision": str(trainer.precision), "device": trainer.strategy.root_device.type}
