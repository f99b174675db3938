"""One forward pass of a segmentation or detection model, whichever it is, and a picture of its output."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cbsa_dense.data.seg_labels import default_palette


def is_detector(model: nn.Module) -> bool:
    from cbsa_dense.models.detector import Detector

    return isinstance(model, Detector)


def forward_any(model: nn.Module, x: torch.Tensor):
    """Segmentation: logits (B, C, H, W); detection (eval mode): per-image detection dicts."""
    if is_detector(model):
        return model(x, [tuple(x.shape[-2:])] * x.shape[0])
    return model(x)


def render_output(model: nn.Module, output, image: np.ndarray, class_names: list[str] | None = None,
                  palette=None, score_threshold: float = 0.3, index: int = 0) -> np.ndarray:
    """Draw one image's prediction: a class-colour overlay (segmentation) or labelled boxes (detection).

    Args:
        model: the model that produced ``output`` (decides how to draw it).
        output: :func:`forward_any`'s result for a batch that contains the image.
        image: (H, W, 3) uint8, the image at the model's input resolution.
        class_names: names for box labels.
        palette: (C, 3) colours for segmentation classes (default
            :func:`~cbsa_dense.data.seg_labels.default_palette`).
        score_threshold: detections scoring below it are not drawn
            (:func:`~cbsa_dense.interpret.det_overlay.draw_detections`).
        index: the image's index in the batch.
    """
    h, w = image.shape[:2]
    if is_detector(model):
        from cbsa_dense.interpret.det_overlay import draw_detections

        det = output[index]
        return draw_detections(image, det["boxes"], det["scores"], det["labels"], class_names, score_threshold)
    logits = output[index:index + 1]
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    pred = logits.argmax(1)[0].cpu().numpy()
    colours = np.asarray(palette if palette is not None else default_palette(logits.shape[1]), dtype=np.uint8)
    return (0.5 * image + 0.5 * colours[pred]).astype(np.uint8)


def to_display(image: torch.Tensor, mean=None, std=None) -> np.ndarray:
    """Normalized (3, H, W) tensor -> (H, W, 3) uint8 (min-max scaled when mean/std are unknown)."""
    x = image.detach().float().cpu()
    if mean is not None and std is not None:
        from cbsa_dense.interpret.inputs import unit_mean_std

        mean, std = unit_mean_std(mean, std)
        x = x * std + mean
    else:
        x = (x - x.min()) / (x.max() - x.min() + 1e-6)
    return (x.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
