"""Linear segmentation head: a 1x1 convolution over one encoder level (Segmenter's linear decoder)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cbsa_dense.errors import ConfigError
from cbsa_dense.models.heads.seg_head_base import SegHead


class LinearHead(SegHead):
    """Per-pixel linear classifier over one encoder level.

    Args:
        in_channels: channels of every encoder output (built by the Segmentor from the encoder).
        num_classes: number of classes.
        dropout: dropout before the classifier.
        in_index: which encoder output to classify.
        norm: ``"batch"`` puts a BatchNorm over the encoder's channels before the classifier (DINOv2's linear
            segmentation head, mmseg's ``BNHead``): the classifier sees standardized channels. On the street
            frames it did not help (docs/real_photos.md). ``None``: the classifier alone (Segmenter's linear
            decoder). Under DDP use ``trainer.sync_batchnorm: true``.

    Shapes: features[in_index] (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int, dropout: float = 0.0, in_index: int = -1,
                 norm: str | None = None) -> None:
        super().__init__()
        if norm not in (None, "batch"):
            raise ConfigError(f"LinearHead norm={norm!r} is invalid: give \"batch\" or null")
        self._set_inputs(in_channels, in_index, num_classes)
        self.norm = nn.BatchNorm2d(self.in_channels[0]) if norm == "batch" else nn.Identity()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(self.in_channels[0], num_classes, kernel_size=1)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.norm(features[self.in_index[0]])))
