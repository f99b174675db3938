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

    Segmentation: the predicted classes blended over the input. Detection: two panels of the input as
    the model sees it (resized, padding cropped off), ``ground truth (N boxes)`` on the left and
    ``predictions >= score_threshold (K boxes)`` on the right, labelled with class names (and scores),
    one colour per class (:func:`cbsa_dense.interpret.det_overlay.side_by_side`; inputs under 384 px are
    enlarged so the labels fit).

    Args:
        every_n_epochs: period in epochs.
        num_images: images of the first validation batch to draw.
        score_threshold: detections scoring below it are neither drawn nor counted.
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
        """Draw and log the pictures of ``batch``; returns the written files."""
        from cbsa_dense.interpret.forward import forward_any, is_detector, render_output, to_display

        datamodule = trainer.datamodule
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        names, palette = getattr(datamodule, "class_names", None), getattr(datamodule, "palette", None)
        out_dir = run_dir(trainer) / "val_predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        if is_detector(pl_module.model) and "gt" in batch and hasattr(pl_module, "predict_batch"):
            pictures = self._detection_pictures(pl_module, batch, mean, std, names)
            return [self._save(trainer, out_dir, i, picture) for i, picture in enumerate(pictures)]
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
            written.append(self._save(trainer, out_dir, i, picture))
        return written

    def _detection_pictures(self, pl_module: LightningModule, batch: dict, mean, std,
                            names: list[str] | None) -> list[np.ndarray]:
        """Ground truth beside predictions on the unpadded input of each image, both in input pixels.

        Detections come from the task's ``predict_batch`` (whatever its evaluation mode: resized, native or
        tiled), in original pixels like the ground truth (``batch["gt"]``); ``batch["scale"]`` ((y, x)
        input pixels per original pixel) maps both onto the input.
        """
        from cbsa_dense.interpret.det_overlay import side_by_side
        from cbsa_dense.interpret.forward import to_display

        count = min(self.num_images, len(batch["image"]))
        head = {k: v[:count] if isinstance(v, list | torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():                          # one forward for all: batch-1 GroupNorm fails on 1x1 maps
            detections = pl_module.predict_batch(head)
        pictures = []
        for i, det in enumerate(detections):
            sy, sx = (float(v) for v in head["scale"][i])
            to_input = torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
            h, w = (int(v) for v in head["image_size"][i])
            gt = head["gt"][i]
            image = to_display(head["image"][i], mean, std)[:h, :w]
            pictures.append(side_by_side(image, gt["boxes"].detach().cpu().double() * to_input, gt["labels"],
                                         det["boxes"].detach().cpu().double() * to_input, det["scores"].detach().cpu(),
                                         det["labels"].detach().cpu(), names, self.score_threshold,
                                         gt_iscrowd=gt.get("iscrowd")))
        return pictures

    @staticmethod
    def _save(trainer: Trainer, out_dir: Path, index: int, picture: np.ndarray) -> Path:
        from PIL import Image

        path = out_dir / f"epoch{trainer.current_epoch:03d}_{index}.png"
        Image.fromarray(picture).save(path)
        log_picture(trainer, f"val_predictions/{index}", np.asarray(picture))
        return path
