"""Stop training at the first non-finite loss, naming the step (instead of training on NaNs)."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from cbsa_dense.data.seg_labels import IGNORE_INDEX


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is NaN or infinite."""


class FiniteLossCheck(Callback):
    """Raise :class:`NonFiniteLossError` when a training step returns a NaN/inf loss.

    The message names the global step, epoch and batch index so the run can be resumed from the last
    good checkpoint with a lower learning rate. Checked after the step (the offending update is not
    saved: Lightning writes checkpoints only after this hook).

    When the batch itself explains the value, the message says so instead of blaming the learning rate:
    a segmentation batch whose ``mask`` pixels are all ignored (255; a mean over zero pixels is NaN), or
    non-finite input ``image`` values; it names the batch's files (``path``) when the batch has them.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = loss.detach().float().item() if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            where = (f"training loss is {value} at global step {trainer.global_step} (epoch "
                     f"{trainer.current_epoch}, batch {batch_idx}); stopping.")
            cause = _data_cause(batch)
            if cause:
                raise NonFiniteLossError(f"{where} {cause}; this is the data, not the learning rate")
            raise NonFiniteLossError(
                f"{where} Lower the learning rate, check the data of this batch, or "
                f"resume from the last checkpoint with --ckpt_path")


def _data_cause(batch) -> str | None:
    """Why this batch alone makes a loss non-finite, or ``None`` when it does not explain it."""
    if not isinstance(batch, dict):
        return None
    paths = batch.get("path")
    files = f" (files: {', '.join(str(p) for p in list(paths)[:4])})" if isinstance(paths, (list, tuple)) and paths else ""
    images = batch.get("image")
    tensors = images if isinstance(images, (list, tuple)) else [images]
    if any(isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
           for t in tensors):
        return f"the batch's images contain NaN/inf values{files}"
    masks = batch.get("mask")
    masks = masks if isinstance(masks, (list, tuple)) else [masks]
    masks = [m for m in masks if isinstance(m, torch.Tensor)]
    if masks and not any(bool((m != IGNORE_INDEX).any()) for m in masks):
        return (f"every mask pixel of the batch is ignored ({IGNORE_INDEX}), so a mean loss over labelled "
                f"pixels divides by zero{files}: check those masks, or use a loss that returns 0 for such a "
                f"batch (SegmentationTask does)")
    return None
