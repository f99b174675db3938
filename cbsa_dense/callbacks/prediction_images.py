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

    Segmentation: two panels of the photo at its original size, ``ground truth`` on the left and
    ``prediction`` (the task's evaluation protocol, as the metrics see it) on the right, each with the class
    colours over the pixels of every class not named like a background (ignored ground-truth pixels left as
    the photo), and one legend of the class names below (:func:`cbsa_dense.interpret.seg_overlay.
    ground_truth_and_prediction`); photos under ``min_side`` px are enlarged (nearest neighbour) so the text
    reads. Without ground truth, the prediction panel alone. Detection: two panels of the input as
    the model sees it (resized, padding cropped off), ``ground truth (N boxes)`` on the left and
    ``predictions >= score_threshold (K boxes)`` on the right, labelled with class names (and scores),
    one colour per class (:func:`cbsa_dense.interpret.det_overlay.side_by_side`; inputs under 384 px are
    enlarged so the labels fit).

    Args:
        every_n_epochs: period in epochs.
        num_images: images of the first validation batch to draw.
        score_threshold: detections scoring below it are neither drawn nor counted.
        min_side: segmentation pictures of smaller photos are enlarged until their longest side reaches it
            (0: never).
        alpha: opacity of the segmentation class colours (a little above the predict overlays' 0.5, so that
            dark palette colours over bright photos still match their legend swatches).
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 4, score_threshold: float = 0.3,
                 min_side: int = 512, alpha: float = 0.6) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ConfigError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs}, {num_images}")
        if min_side < 0 or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"min_side must be >= 0 and alpha in [0, 1], got {min_side}, {alpha}")
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.score_threshold = score_threshold
        self.min_side = min_side
        self.alpha = alpha

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
        if not is_detector(pl_module.model):
            pictures = self._segmentation_pictures(trainer, pl_module, batch, mean, std)
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

    def _segmentation_pictures(self, trainer: Trainer, pl_module: LightningModule, batch: dict, mean,
                               std) -> list[np.ndarray]:
        """Ground truth (``batch["mask"]``, original size) beside the prediction on each image's photo.

        The prediction is the task's ``predict_scores`` (its evaluation protocol: resize, sliding window, ...)
        at the original size; a model without it is run once on the batch and its logits resized. The photo
        is the image file (``batch["path"]``) when it has the original size, else the input denormalized
        and resized.
        """
        import torch.nn.functional as F

        from cbsa_dense.callbacks.prediction_writer import class_names
        from cbsa_dense.data.seg_labels import default_palette
        from cbsa_dense.interpret.forward import forward_any
        from cbsa_dense.interpret.seg_overlay import ground_truth_and_prediction

        count = min(self.num_images, len(batch["image"]))
        head = {k: v[:count] if isinstance(v, list | tuple | torch.Tensor) else v for k, v in batch.items()}
        images = head["image"]
        with torch.no_grad():                          # one forward for all: batch-1 GroupNorm fails on 1x1 maps
            if hasattr(pl_module, "predict_scores") and "orig_size" in head:
                preds = [scores.argmax(0) for scores in pl_module.predict_scores(head)]
            elif isinstance(images, torch.Tensor):
                preds = list(forward_any(pl_module.model, images.to(pl_module.device)).argmax(1))
            else:                                      # variable-size batches come as lists
                preds = [forward_any(pl_module.model, image[None].to(pl_module.device)).argmax(1)[0]
                         for image in images]
        num_classes = int(getattr(pl_module, "num_classes", 0) or 0)
        info = getattr(pl_module, "data_info", None) or {}
        palette = getattr(trainer.datamodule, "palette", None)
        palette = palette if palette is not None else info.get("palette")
        palette = np.asarray(palette if palette is not None else default_palette(max(num_classes, 1)), np.uint8)
        names = class_names(trainer, pl_module)
        pictures = []
        for i in range(count):
            pred = preds[i].detach().cpu().numpy()
            gt = head["mask"][i].detach().cpu().numpy() if "mask" in head else None
            if gt is not None and gt.shape != pred.shape:     # a model's own output size: to the mask's
                pred = F.interpolate(preds[i][None, None].float(), size=gt.shape, mode="nearest")[0, 0]
                pred = pred.long().cpu().numpy()
            photo = self._photo(head, i, mean, std, pred.shape)
            pictures.append(ground_truth_and_prediction(photo, gt, pred, names, palette, self.alpha,
                                                        min_side=self.min_side))
        return pictures

    @staticmethod
    def _photo(batch: dict, index: int, mean, std, size: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) uint8 photo of ``size``: its file when that has this size, else the input resized."""
        from PIL import Image

        from cbsa_dense.data.seg_labels import read_image
        from cbsa_dense.interpret.forward import to_display

        paths = batch.get("path")
        if paths is not None and Path(str(paths[index])).is_file():
            photo = read_image(paths[index])
            if photo.shape[:2] == tuple(size):
                return photo
        photo = to_display(batch["image"][index], mean, std)
        if photo.shape[:2] != tuple(size):
            photo = np.asarray(Image.fromarray(photo).resize((size[1], size[0]), Image.BILINEAR))
        return photo

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
            detections = pl_module.predict_batch(head, report=False)   # validation counts these images
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
