"""UPerNet-like multi-level head: pyramid pooling on the coarsest level, FPN top-down fusion, concat."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cbsa_dense.errors import ConfigError
from cbsa_dense.models.heads.seg_head_base import SegHead


def conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class UPerHead(SegHead):
    """UPerNet decoder (mmseg ``UPerHead``) over several encoder levels.

    A plain ViT gives every level at the same stride; ``scales`` resamples level i by ``scales[i]``
    first (mmseg's ViT + UPerNet recipe uses a multi-level neck with scales 4, 2, 1, 0.5 on blocks
    3, 5, 7, 11). Levels must be ordered fine to coarse after scaling.

    Args:
        in_channels: channels of every encoder output (built by the Segmentor from the encoder).
        num_classes: number of classes.
        in_index: the encoder outputs used (e.g. ``[0, 1, 2, 3]`` with ``out_indices=[3, 5, 7, 11]``).
        channels: width of the fused features.
        pool_scales: pyramid pooling bins on the coarsest level.
        scales: per-level resize factors applied first (``None`` = none).
        dropout: dropout before the classifier.

    Shapes: levels (B, C_i, h_i, w_i) -> logits (B, num_classes, h_0 * s_0, w_0 * s_0).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: Sequence[int] = (0, 1, 2, 3),
                 channels: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 scales: Sequence[float] | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self._set_inputs(list(in_channels), list(in_index), num_classes)
        if scales is not None and len(scales) != len(self.in_channels):
            raise ConfigError(f"UPerHead: {len(scales)} scales for {len(self.in_channels)} levels")
        self.scales = list(scales) if scales is not None else None
        self.pool_scales = list(pool_scales)
        top = self.in_channels[-1]
        self.ppm = nn.ModuleList(conv_bn_relu(top, channels) for _ in self.pool_scales)
        self.bottleneck = conv_bn_relu(top + len(self.pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels) for c in self.in_channels[:-1])
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in self.in_channels[:-1])
        self.fuse = conv_bn_relu(len(self.in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = [features[i] for i in self.in_index]
        if self.scales is not None:
            levels = [x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                      if s > 1 else F.max_pool2d(x, kernel_size=round(1 / s))
                      for x, s in zip(levels, self.scales)]
        return levels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = self._levels(features)
        top = levels[-1]
        pooled = [F.interpolate(ppm(F.adaptive_avg_pool2d(top, s)), size=top.shape[-2:], mode="bilinear",
                                align_corners=False) for s, ppm in zip(self.pool_scales, self.ppm)]
        laterals = [lat(x) for lat, x in zip(self.lateral, levels[:-1])] + [self.bottleneck(torch.cat([top, *pooled], 1))]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="bilinear", align_corners=False)
        outs = [fpn(x) for fpn, x in zip(self.fpn, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in outs[1:]]
        return self.classifier(self.dropout(self.fuse(torch.cat(outs, 1))))
