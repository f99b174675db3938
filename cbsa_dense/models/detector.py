"""Detector: encoder -> feature pyramid neck -> torchvision detection head (ViTDet layout)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import paste_masks_in_image

from cbsa_dense.errors import ConfigError
from cbsa_dense.models.encoders.base import declared_outputs
from cbsa_dense.models.heads.det_common import HeadFactory
from cbsa_dense.models.necks.base import NeckFactory

__all__ = ["Detector", "HeadFactory", "NeckFactory"]



class Detector(nn.Module):
    """Object detector over a plain single-stride encoder (any input size, global attention).

    Assembly (the same in both tasks, see :class:`~cbsa_dense.models.segmentor.Segmentor`): the encoder
    declares its outputs; the neck is BUILT here from the last one (``out_channels[-1]``,
    ``out_strides[-1]``) and the head from the neck's ``out_channels`` and ``strides`` and ``num_classes``,
    so a config names each part once.
    Images arrive resized, normalized and padded by the datamodule; the detector only pads further to a
    multiple of the coarsest stride. :meth:`postprocess` maps detections back to original pixels.

    Args:
        encoder: module ``images (B, 3, H, W) -> list of NCHW maps`` with ``out_channels``/``out_strides``.
        neck: factory ``(in_channels, in_stride) -> pyramid`` (e.g. ``SimpleFeaturePyramid``).
        head: factory ``(in_channels, strides, num_classes) -> head`` (e.g. ``FCOSHead``).
        num_classes: object classes (contiguous labels 0..num_classes-1).
    """

    def __init__(self, encoder: nn.Module, neck: NeckFactory, head: HeadFactory, num_classes: int) -> None:
        super().__init__()
        channels, in_strides = declared_outputs(encoder)
        self.encoder = encoder
        self.neck = neck(channels[-1], in_strides[-1])
        strides = [int(s) for s in self.neck.strides]
        self.head = head(int(self.neck.out_channels), strides, num_classes)
        if list(getattr(self.head, "strides", strides)) != strides:
            raise ConfigError(f"head strides {self.head.strides} differ from the neck's {strides}")
        self.num_classes = num_classes
        self.size_divisible = max(strides)

    @property
    def with_masks(self) -> bool:
        """Whether the head predicts instance masks (targets then need ``masks``)."""
        return hasattr(self.head, "roi_heads") and self.head.roi_heads.has_mask()

    def forward(self, images: Tensor, image_sizes: Sequence[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None):
        """Losses (training) or detections in input pixels (eval).

        Args:
            images: (B, 3, H, W) normalized, padded batch.
            image_sizes: per image (h, w) of the valid (unpadded) region, in input pixels.
            targets: per image ``boxes`` (N, 4) xyxy input pixels, ``labels`` (N,) in 0..C-1, and
                ``masks`` (N, H, W) uint8 for mask heads; required in training.

        Returns:
            Loss dict (training), or per image ``boxes`` (N, 4), ``scores`` (N,), ``labels`` (N,) and for
            mask heads ``masks`` (N, 1, 28, 28) box-relative probabilities.
        """
        if self.training and targets is None:
            raise ValueError(f"{type(self.head).__name__} needs targets in training mode (or call .eval())")
        images, targets = self.pad(images, targets)
        return self.decode(self.encoder(images)[-1], images, image_sizes, targets)

    def pad(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None):
        """``images`` (and the targets' masks) padded at the bottom/right to a multiple of the encoder's stride."""
        h, w = images.shape[-2:]
        div = self.size_divisible
        pad_h, pad_w = (-h) % div, (-w) % div
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
            if targets is not None and self.with_masks:
                targets = [{**t, "masks": F.pad(t["masks"], (0, pad_w, 0, pad_h))} for t in targets]
        return images, targets

    def decode(self, encoded: Tensor, images: Tensor, image_sizes: Sequence[tuple[int, int]],
               targets: list[dict[str, Tensor]] | None = None):
        """:meth:`forward` after the encoder: ``encoded`` is its last map of the padded ``images``, whose shape
        alone the head reads (a zero-stride view of that shape does)."""
        features = self.neck(encoded)
        batch = ImageList(images, [(int(a), int(b)) for a, b in image_sizes])
        return self.head(batch, features, targets)

    @staticmethod
    def postprocess(detections: list[dict[str, Tensor]], scales: Sequence[tuple[float, float]],
                    original_sizes: Sequence[tuple[int, int]], mask_threshold: float = 0.5) -> list[dict[str, Tensor]]:
        """Map detections from input pixels back to original image pixels.

        Args:
            detections: output of :meth:`forward` in eval.
            scales: per image, (y, x) input pixels per original pixel (the datamodule's resize factors).
            original_sizes: per image (height, width) of the original image.
            mask_threshold: probability above which a pasted mask pixel is foreground.

        Returns:
            Per image ``boxes`` (N, 4) xyxy clipped to the original image, ``scores``, ``labels`` and, with
            masks, ``masks`` (N, H0, W0) bool at the original size.
        """
        out = []
        for det, scale, (h0, w0) in zip(detections, scales, original_sizes):
            boxes = det["boxes"] / det["boxes"].new_tensor([scale[1], scale[0], scale[1], scale[0]])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w0)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h0)
            item = {"boxes": boxes, "scores": det["scores"], "labels": det["labels"]}
            if "masks" in det:
                if len(boxes):
                    item["masks"] = paste_masks_in_image(det["masks"], boxes, (int(h0), int(w0)))[:, 0] > mask_threshold
                else:
                    item["masks"] = torch.zeros((0, int(h0), int(w0)), dtype=torch.bool, device=boxes.device)
            out.append(item)
        return out
