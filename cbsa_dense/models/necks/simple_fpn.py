"""ViTDet's simple feature pyramid: a multi-scale pyramid built from one single-stride feature map."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from timm.layers import LayerNorm2d
from torch import Tensor, nn


class SimpleFeaturePyramid(nn.Module):
    """Feature pyramid at ``strides`` from the last encoder map (Li et al., ViTDet, 2022).

    Per output stride ``s`` the map at ``in_stride`` is upsampled by transposed 2x2 convolutions
    (channels halved each time, LayerNorm + GELU between) or downsampled by 2x2 max pooling, then
    projected by a 1x1 and a 3x3 convolution, each followed by LayerNorm. Built from the encoder's
    declared output: ``neck = SimpleFeaturePyramid(encoder.out_channels[-1], encoder.out_strides[-1])``.

    Args:
        in_channels: channels of the input map (the encoder's ``out_channels[-1]``).
        in_stride: stride of the input map (the encoder's ``out_strides[-1]``, its patch size).
        out_channels: channels of every pyramid level (a multiple of 32 for FCOS/RetinaNet GroupNorm heads).
        strides: output strides, increasing; each a power-of-two multiple or fraction of ``in_stride``.

    Attributes:
        out_channels: channels of every level (torchvision's backbone contract).
        strides: the output strides; ``names`` their keys ``"p{log2(stride)}"``.
    """

    def __init__(self, in_channels: int, in_stride: int, out_channels: int = 256,
                 strides: Sequence[int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        strides = [int(s) for s in strides]
        if not strides or sorted(set(strides)) != strides:
            raise ValueError(f"strides must be increasing and distinct, got {strides}")
        self.in_channels = in_channels
        self.in_stride = in_stride
        self.out_channels = out_channels
        self.strides = strides
        self.names = [f"p{int(math.log2(s))}" for s in strides]
        self.stages = nn.ModuleList(self._stage(in_channels, in_stride, s, out_channels) for s in strides)

    @staticmethod
    def _stage(dim: int, in_stride: int, stride: int, out_channels: int) -> nn.Sequential:
        steps = math.log2(in_stride / stride)
        if steps != int(steps):
            raise ValueError(f"output stride {stride} is not a power-of-two multiple or fraction of the input "
                             f"stride {in_stride}")
        layers: list[nn.Module] = []
        steps = int(steps)
        for i in range(steps):  # upsampling
            if dim // 2 < 1:
                raise ValueError(f"cannot upsample {in_stride} -> {stride}: {dim} channels run out")
            layers.append(nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
            dim //= 2
            if i < steps - 1:
                layers += [LayerNorm2d(dim), nn.GELU()]
        layers += [nn.MaxPool2d(kernel_size=2, stride=2) for _ in range(-steps)]
        layers += [nn.Conv2d(dim, out_channels, kernel_size=1, bias=False), LayerNorm2d(out_channels),
                   nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                   LayerNorm2d(out_channels)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """x (B, in_channels, H, W) at ``in_stride`` -> {name: (B, out_channels, H*in_stride/s, W*in_stride/s)}.

        ``H`` and ``W`` must be divisible by ``max(strides) / in_stride`` when pooling (pad the image to a
        multiple of ``max(strides)``).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SimpleFeaturePyramid expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        return OrderedDict((name, stage(x)) for name, stage in zip(self.names, self.stages))
