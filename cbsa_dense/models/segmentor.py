"""Segmentation model = encoder (+ optional neck) + head, each built elsewhere and injected."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cbsa_dense.errors import ConfigError


class Segmentor(nn.Module):
    """Encoder -> (neck) -> head -> bilinear upsampling to the input size.

    The encoder pads its input at the bottom/right to a multiple of its stride; the head's logits (at
    the stride of its finest input) are upsampled to that padded size and the padding is cropped off
    (Segmenter's convention), so any input size works.

    Args:
        encoder: ``encoder(images) -> list of NCHW maps`` with ``out_channels`` / ``out_strides``.
        head: a :class:`~cbsa_dense.models.heads.seg_head_base.SegHead` (``in_channels``, ``in_index``,
            ``num_classes``); its inputs are checked against the encoder's (or the neck's) outputs.
        neck: optional ``neck(features) -> features`` with its own ``out_channels`` / ``out_strides``.

    Shapes: images (B, 3, H, W) normalized -> logits (B, num_classes, H, W).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, neck: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.neck = neck
        self.head = head
        source = neck if neck is not None else encoder
        channels = getattr(source, "out_channels", None)
        strides = getattr(source, "out_strides", None)
        if channels is None or strides is None:
            raise ConfigError(f"{type(source).__name__} must declare out_channels and out_strides")
        if hasattr(head, "check_inputs"):
            head.check_inputs(list(channels))
        self.num_classes = head.num_classes
        self.output_stride = min(strides[i] for i in getattr(head, "in_index", [-1]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        features = self.encoder(images)
        if self.neck is not None:
            features = self.neck(features)
        logits = self.head(features)
        s = self.output_stride
        padded = (math.ceil(h / s) * s, math.ceil(w / s) * s)
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        return logits[..., :h, :w]
