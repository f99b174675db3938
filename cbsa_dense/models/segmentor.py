"""Segmentation model = an encoder + a head built from the encoder's declared outputs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cbsa_dense.errors import ConfigError
from cbsa_dense.models.encoders.base import declared_outputs
from cbsa_dense.models.heads.seg_head_base import SegHeadFactory


class Segmentor(nn.Module):
    """Encoder -> head -> bilinear upsampling to the input size.

    Assembly (the same in both tasks, see :class:`~cbsa_dense.models.detector.Detector`): the encoder is
    built first and declares its outputs (``out_channels``/``out_strides``); the head is then BUILT here
    from them, ``head(encoder.out_channels, num_classes)``, so channels and class counts are never typed
    twice. The encoder pads its input at the bottom/right to a multiple of its stride; the head's logits
    (at the stride of its finest input) are upsampled to that padded size and the padding is cropped off
    (Segmenter's convention), so any input size works.

    Args:
        encoder: an :class:`~cbsa_dense.models.encoders.Encoder` (``encoder(images) -> list of NCHW maps``).
        head: head factory ``(in_channels: list[int], num_classes) -> SegHead``: a head class such as
            :class:`~cbsa_dense.models.heads.cbt_decoder.CBTDecoder`, or ``functools.partial`` of one with
            its options (``partial(CBTDecoder, n_layers=2)``).
        num_classes: number of classes.

    Shapes: images (B, 3, H, W) normalized -> logits (B, num_classes, H, W).
    """

    def __init__(self, encoder: nn.Module, head: SegHeadFactory, num_classes: int) -> None:
        super().__init__()
        if isinstance(head, nn.Module):
            raise ConfigError(f"Segmentor takes a head factory (the class, or functools.partial of it), not a "
                              f"built {type(head).__name__}: it builds the head from the encoder's outputs")
        channels, strides = declared_outputs(encoder)
        self.encoder = encoder
        self.head = head(list(channels), int(num_classes))
        if int(getattr(self.head, "num_classes", num_classes)) != int(num_classes):
            raise ConfigError(f"{type(self.head).__name__} predicts {self.head.num_classes} classes, the model "
                              f"{num_classes}")
        if hasattr(self.head, "check_inputs"):
            self.head.check_inputs(list(channels))
        self.num_classes = int(num_classes)
        self.output_stride = min(strides[i] for i in getattr(self.head, "in_index", [-1]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(images), images.shape[-2:])

    def decode(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits (B, num_classes, h, w) of the encoder's ``features`` of images of ``size`` (h, w)."""
        h, w = size
        logits = self.head(features)
        s = self.output_stride
        padded = (math.ceil(h / s) * s, math.ceil(w / s) * s)
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        return logits[..., :h, :w]
