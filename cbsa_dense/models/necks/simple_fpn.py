"""ViTDet's simple feature pyramid: a multi-scale pyramid built from one single-stride feature map."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from timm.layers import LayerNorm2d
from torch import Tensor, nn

from cbsa_dense.errors import ConfigError
from cbsa_dense.models.necks.base import Neck

#: Default pyramid: 2x, 1x, 1/2x and 1/4x the encoder's resolution (strides 8-64 for patch 16, 7-56 for patch 14).
DEFAULT_SCALES = (2.0, 1.0, 0.5, 0.25)


def level_name(stride: int) -> str:
    """Key of the pyramid level at ``stride``: ``"p{floor(log2(stride))}"`` (p3 for 8 and for 14's half, 7)."""
    return f"p{int(stride).bit_length() - 1}"


def pyramid_strides(in_stride: int, scales: Sequence[float]) -> list[int]:
    """Output strides ``in_stride / scale`` of a pyramid at power-of-two ``scales`` of the input map.

    Raises :class:`~cbsa_dense.errors.ConfigError` naming the setting when a scale is not a power of two,
    the scales are not decreasing, or a stride is not a whole number of pixels (e.g. scale 4 of stride 14).
    """
    scales = [float(s) for s in scales]
    if not scales or sorted(set(scales), reverse=True) != scales:
        raise ConfigError(f"neck scales={scales}: need distinct, decreasing resolution factors, e.g. "
                          f"{list(DEFAULT_SCALES)}")
    strides = []
    for scale in scales:
        if scale <= 0 or math.log2(scale) != int(math.log2(scale)):
            raise ConfigError(f"neck scales={scales}: {scale} is not a power of two (2, 1, 0.5, ...)")
        stride = in_stride / scale
        if stride != int(stride):
            raise ConfigError(f"neck scales={scales}: scale {scale} of the encoder stride {in_stride} gives a "
                              f"fractional stride {stride}; drop that level")
        strides.append(int(stride))
    return strides


class SimpleFeaturePyramid(Neck):
    """Feature pyramid at power-of-two scales of the last encoder map (Li et al., ViTDet, 2022).

    Per level the map at ``in_stride`` is upsampled by transposed 2x2 convolutions (channels halved each
    time, LayerNorm + GELU between) or downsampled by 2x2 max pooling, then projected by a 1x1 and a 3x3
    convolution, each followed by LayerNorm. Built from the encoder's declared output:
    ``neck = SimpleFeaturePyramid(encoder.out_channels[-1], encoder.out_strides[-1])``, so the levels follow
    the encoder's patch size: strides 8, 16, 32, 64 for patch 16 and 7, 14, 28, 56 for patch 14 (DINOv2)
    with the default ``scales``. The torchvision heads accept any stride (anchors and FCOS regression
    ranges are sized in strides; RoIAlign gets the exact scales from the strides).

    Args:
        in_channels: channels of the input map (the encoder's ``out_channels[-1]``).
        in_stride: stride of the input map (the encoder's ``out_strides[-1]``, its patch size).
        out_channels: channels of every pyramid level (a multiple of 32 for FCOS/RetinaNet GroupNorm heads).
        scales: resolution of each level relative to the input map, decreasing powers of two
            (``2.0`` = twice the encoder's resolution = stride ``in_stride / 2``). Default 2, 1, 1/2, 1/4.
        strides: explicit output strides instead of ``scales`` (increasing; each a power-of-two multiple or
            fraction of ``in_stride``, so they depend on the encoder's patch size: prefer ``scales``).
        input_norm: ``"batch"`` puts a BatchNorm over the encoder's channels before the pyramid (as DINOv2's
            dense heads do). Pretrained ViT features share a large component across positions (DINOv2-S/14
            on aerial photos: mean cosine 0.83 between patch tokens, against 0.30 for a random encoder), which
            the per-position LayerNorms keep; centring and scaling each channel by dataset statistics leaves
            the spatial contrast a detector needs (docs/finetuning.md has the measurements). ``None``: none
            (ViTDet). Under DDP use ``trainer.sync_batchnorm: true``.

    Attributes:
        out_channels: channels of every level (torchvision's backbone contract).
        strides: the output strides; ``names`` their keys (:func:`level_name`).

    Raises:
        ConfigError: scales or strides that do not fit ``in_stride`` (the message names them).
    """

    def __init__(self, in_channels: int, in_stride: int, out_channels: int = 256,
                 scales: Sequence[float] = DEFAULT_SCALES, strides: Sequence[int] | None = None,
                 input_norm: str | None = None) -> None:
        super().__init__()
        if input_norm not in (None, "batch"):
            raise ConfigError(f"neck input_norm={input_norm!r} is invalid: give \"batch\" or null")
        if strides is not None:
            strides = [int(s) for s in strides]
            if not strides or sorted(set(strides)) != strides:
                raise ConfigError(f"neck strides={strides}: need increasing, distinct strides")
            scales = [in_stride / s for s in strides]
            for stride, scale in zip(strides, scales):
                if math.log2(scale) != int(math.log2(scale)):
                    doubled = [int(in_stride / s) for s in DEFAULT_SCALES]
                    raise ConfigError(f"neck strides={strides}: output stride {stride} is not a power-of-two "
                                      f"multiple or fraction of the encoder stride {in_stride} (its patch size); "
                                      f"use scales {list(DEFAULT_SCALES)} (strides {doubled}) instead of strides")
        else:
            strides = pyramid_strides(in_stride, scales)
        self.in_channels = in_channels
        self.in_stride = in_stride
        self.out_channels = out_channels
        self.strides = strides
        self.names = [level_name(s) for s in strides]
        self.input_norm = nn.BatchNorm2d(in_channels) if input_norm == "batch" else nn.Identity()
        self.stages = nn.ModuleList(self._stage(in_channels, in_stride, s, out_channels) for s in strides)

    @staticmethod
    def _stage(dim: int, in_stride: int, stride: int, out_channels: int) -> nn.Sequential:
        steps = round(math.log2(in_stride / stride))
        layers: list[nn.Module] = []
        for i in range(steps):  # upsampling
            if dim // 2 < 1:
                raise ConfigError(f"neck: cannot upsample stride {in_stride} -> {stride}: {dim} channels run out")
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
        x = self.input_norm(x)
        return OrderedDict((name, stage(x)) for name, stage in zip(self.names, self.stages))
