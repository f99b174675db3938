"""Log a few validation predictions as pictures (segmentation overlays, detection boxes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class PredictionImages(Callback):
    """Every ``every_n_epochs`` validation epochs, draw the predictions for the first ``num_images``
    images of the first validation batch.

    Writes ``<log_dir>/val_predictions/epoch{E:03d}_{i}.png`` and, with a TensorBoard logger, adds the
    pictures under ``val_predictions/{i}``.

    Args:
        every_n_epochs: period in epochs.
        num_images: images of the first validation batch to draw.
        score_threshold: detections below it are not drawn.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 4, score_threshold: float = 0.3) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs}, {num_images}")
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
        out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "val_predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for i, image in enumerate(list(batch["image"])[: self.num_images]):
            with torch.no_grad():
                output = forward_any(pl_module.model, image[None].to(pl_module.device))
            picture = render_output(pl_module.model, output, to_display(image, mean, std), names, palette,
                                    self.score_threshold)
            path = out_dir / f"epoch{trainer.current_epoch:03d}_{i}.png"
            Image.fromarray(picture).save(path)
            written.append(path)
            experiment = getattr(trainer.logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(f"val_predictions/{i}", np.asarray(picture), global_step=trainer.global_step,
                                     dataformats="HWC")
        return written
