"""Shared plumbing of the torchvision detection heads (``det_*.py``).

Each head subclasses a torchvision detection model, keeps its losses, matching and post-processing,
and drops its ``backbone`` and ``transform``: the :class:`~cbsa_dense.models.detector.Detector` runs the
encoder and neck, and the datamodule owns resizing and normalization (protocols.md: torchvision's
``GeneralizedRCNNTransform`` would resize and renormalize again, in eval too).

Head contract: ``head(in_channels: int, strides: list[int], num_classes: int, **options)``;
``head(images: ImageList, features: OrderedDict[str, (B, C, H/s, W/s)], targets | None)`` returns the
loss dict in training and, in eval, per image ``{"boxes": (N, 4) xyxy in input pixels, "scores": (N,),
"labels": (N,) in 0..num_classes-1}`` plus ``"masks": (N, 1, M, M)`` box-relative probabilities for
mask heads. Targets carry ``boxes`` (xyxy input pixels), ``labels`` (0..num_classes-1) and, for mask
heads, ``masks`` (N, H, W) uint8 at the padded input size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cbsa_dense.errors import ConfigError


class DetHead(nn.Module):
    """Base class (a marker) of detection heads: the head contract of this module's doc. Put it first in
    the bases of a torchvision-model subclass (``class FCOSHead(DetHead, FCOS)``); configs then accept the
    head by class name and ``--help`` lists it."""


#: ``head(in_channels, strides, num_classes) -> DetHead``: a head class (``FCOSHead``) or a partial of one.
HeadFactory = Callable[[int, list[int], int], DetHead]


class ChannelsStub(nn.Module):
    """Stands in for the backbone while a torchvision model is built (it only reads ``out_channels``)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels


def check_head_inputs(name: str, in_channels: int, strides: Sequence[int], num_classes: int,
                      group_norm: bool) -> None:
    """Fail early, naming the numbers, on inputs a torchvision head cannot take."""
    if num_classes < 1:
        raise ConfigError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if not strides:
        raise ConfigError(f"{name}: needs at least one feature level, got strides {list(strides)}")
    if group_norm and in_channels % 32:
        raise ConfigError(f"{name}: GroupNorm(32) needs neck out_channels divisible by 32, got {in_channels}")


def shift_labels(targets: list[dict] | None, offset: int) -> list[dict] | None:
    """Copy of ``targets`` with ``labels + offset`` (R-CNN heads count background as label 0)."""
    if targets is None:
        return None
    return [{**t, "labels": t["labels"] + offset} for t in targets]
