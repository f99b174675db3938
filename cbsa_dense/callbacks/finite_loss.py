"""Stop training at the first non-finite loss, naming the step (instead of training on NaNs)."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss is NaN or infinite."""


class FiniteLossCheck(Callback):
    """Raise :class:`NonFiniteLossError` when a training step returns a NaN/inf loss.

    The message names the global step, epoch and batch index so the run can be resumed from the last
    good checkpoint with a lower learning rate. Checked after the step (the offending update is not
    saved: Lightning writes checkpoints only after this hook).
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = loss.detach().float().item() if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
                f"batch {batch_idx}); stopping. Lower the learning rate, check the data of this batch, or "
                f"resume from the last checkpoint with --ckpt_path")
