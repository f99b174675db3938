"""Log a few validation predictions as pictures (segmentation overlays, detection boxes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from cbsa_dense.callbacks.picture_log import log_picture
from cbsa_dense.errors import ConfigError
from cbsa_dense.tasks.base import run_dir


class PredictionImages(Callback):
    """Every ``every_n_epochs`` validation epochs, draw the predictions for the first ``num_images``
    images of the first validation batch.

    Writes ``<log_dir>/val_predictions/epoch{E:03d}_{i}.png`` and sends the pictures, under
    ``val_predictions/{i}``, to every logger that takes images (TensorBoard, W&B, MLflow, ...).

    Args:
        every_n_epochs: period in epochs.
        num_images: images of the first validation batch to draw.
        score_threshold: detections below it are not drawn.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 4, score_threshold: float = 0.3) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ConfigError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs}, {num_images}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.score_threshold = score_threshold

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx or trainer.sanity_checking or trainer.global_rank or trainer.current_epoch % self.every_n_epochs:
            return
        self.draw(trainer, pl_module, batch)

    def draw(self, trainer: Trainer, pl_module: LightningModule, batch: dict) -> list[Path]:
        from PIL import Image

        from cbsa_dense.interpret.forward import forward_any, render_output, to_display

        datamodule = trainer.datamodule
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        names, palette = getattr(datamodule, "class_names", None), getattr(datamodule, "palette", None)
        out_dir = run_dir(trainer) / "val_predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        images = batch["image"][: self.num_images]
        if isinstance(images, torch.Tensor):  # one forward for all: batch-1 GroupNorm fails on 1x1 maps
            with torch.no_grad():
                output = forward_any(pl_module.model, images.to(pl_module.device))
            drawn = [(image, output, i) for i, image in enumerate(images)]
        else:                                 # variable-size evaluation batches come as lists
            with torch.no_grad():
                drawn = [(image, forward_any(pl_module.model, image[None].to(pl_module.device)), 0)
                         for image in images]
        for i, (image, output, index) in enumerate(drawn):
            picture = render_output(pl_module.model, output, to_display(image, mean, std), names, palette,
                                    self.score_threshold, index=index)
            path = out_dir / f"epoch{trainer.current_epoch:03d}_{i}.png"
            Image.fromarray(picture).save(path)
            written.append(path)
            log_picture(trainer, f"val_predictions/{i}", np.asarray(picture))
        return written
