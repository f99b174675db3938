"""The contract of detection necks and the factory type the Detector builds them with."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class Neck(nn.Module):
    """Base class of detection necks: built as ``neck(in_channels, in_stride)`` from the encoder's last
    declared output; ``neck(map (B, C, H/s, W/s)) -> OrderedDict[name, (B, out_channels, H/s_i, W/s_i)]``.

    Attributes (set by subclasses):
        out_channels: channels of every output level (torchvision's backbone contract).
        strides: the output strides, increasing.
    """

    out_channels: int
    strides: list[int]


#: ``neck(in_channels, in_stride) -> Neck``: a neck class (``SimpleFeaturePyramid``) or a partial of one.
NeckFactory = Callable[[int, int], Neck]
