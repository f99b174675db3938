"""Log CBSA explanation pictures of a few validation images every N epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from cbsa_dense.callbacks.picture_log import log_picture
from cbsa_dense.errors import ConfigError
from cbsa_dense.tasks.base import run_dir


class ExplainCallback(Callback):
    """Every ``every_n_epochs`` validation epochs, explain the first ``num_images`` validation images.

    Writes ``<log_dir>/explain/epoch{E:03d}/val{i}_layer{L}_head{h}.png`` (the picture of
    ``cbsa-dense explain``) and sends them to every logger that takes images (TensorBoard, W&B, MLflow).

    Args:
        every_n_epochs: period in epochs.
        num_images: images of the first validation batch to explain.
        layers: CBSA layer indices (forward order, negative from the end).
        heads: heads to draw.
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 2, layers: list[int] | None = None,
                 heads: list[int] | None = None) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ConfigError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs}, {num_images}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.layers = list(layers or [-1])
        self.heads = list(heads or [0])

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        if trainer.global_rank != 0:
            return
        self.explain_batch(trainer, pl_module, batch)

    def explain_batch(self, trainer: Trainer, pl_module: LightningModule, batch: dict) -> list[Path]:
        from cbsa_dense.interpret.capture import capture_extractions, cbsa_layers
        from cbsa_dense.interpret.forward import forward_any, to_display
        from cbsa_dense.interpret.render import save_explanation

        images = batch["image"]
        images = images[: self.num_images] if isinstance(images, torch.Tensor) else images[: self.num_images]
        out_dir = run_dir(trainer) / "explain" / f"epoch{trainer.current_epoch:03d}"
        written = []
        for i, image in enumerate(images):
            x = image[None].to(pl_module.device)
            with torch.no_grad(), capture_extractions(pl_module.model, self.layers) as records:
                forward_any(pl_module.model, x)
            picture = to_display(image, getattr(trainer.datamodule, "mean", None), getattr(trainer.datamodule, "std", None))
            names = [name for name, _ in cbsa_layers(pl_module.model)]
            by_name = {record.name: record for record in records}    # records come in forward order
            for layer in self.layers:
                record = by_name[names[layer]]
                for head in self.heads:
                    path = out_dir / f"val{i}_layer{layer}_head{head}.png"
                    written.append(save_explanation(path, picture, record, 0, head))
        from PIL import Image

        for path in written:
            log_picture(trainer, f"explain/{path.stem}", np.asarray(Image.open(path).convert("RGB")))
        return written

