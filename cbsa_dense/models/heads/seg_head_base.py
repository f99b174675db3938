"""What every segmentation head declares, and the check of its inputs against the encoder's outputs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cbsa_dense.errors import ConfigError


class SegHead(nn.Module):
    """Base of segmentation heads.

    A head maps the encoder's list of NCHW feature maps to class logits (B, num_classes, h, w) at the
    resolution of its finest input level; :class:`~cbsa_dense.models.segmentor.Segmentor` upsamples them.

    Attributes:
        in_channels: channels expected at each used level.
        in_index: indices of the encoder outputs the head uses.
        num_classes: number of output classes.
    """

    in_channels: list[int]
    in_index: list[int]
    num_classes: int

    def _set_inputs(self, in_channels: int | Sequence[int], in_index: int | Sequence[int],
                    num_classes: int) -> None:
        self.in_channels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        self.in_index = [in_index] if isinstance(in_index, int) else list(in_index)
        if len(self.in_channels) != len(self.in_index):
            raise ConfigError(f"{type(self).__name__}: in_channels {self.in_channels} and in_index "
                             f"{self.in_index} must have the same length")
        if num_classes < 1:
            raise ConfigError(f"{type(self).__name__}: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes

    def check_inputs(self, channels: Sequence[int]) -> None:
        """Raise if the encoder outputs (``channels``, one per level) do not match the head's inputs."""
        for index, expected in zip(self.in_index, self.in_channels):
            if not -len(channels) <= index < len(channels):
                raise ConfigError(f"{type(self).__name__} reads encoder output {index} but the encoder has "
                                 f"{len(channels)} outputs (out_channels={list(channels)})")
            if channels[index] != expected:
                raise ConfigError(f"{type(self).__name__} expects {expected} channels at encoder output {index} "
                                 f"(in_channels) but the encoder gives {channels[index]}")
