"""What every segmentation head declares, how it is built from the encoder's outputs, and the check.

Heads are built by :class:`~cbsa_dense.models.segmentor.Segmentor` (and so by ``SegmentationTask``) as
``head(in_channels, num_classes)``: ``in_channels`` are the channels of EVERY output the encoder declares
(``encoder.out_channels``), ``num_classes`` comes from the task (linked from the data under the CLI). A
head picks the outputs it reads with its own ``in_index``. A config therefore names only the head's own
options (``class_path: CBTDecoder``, ``init_args: {n_layers: 3}``); widths and class counts are never
typed twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cbsa_dense.errors import ConfigError


class SegHead(nn.Module):
    """Base of segmentation heads.

    A head maps the encoder's list of NCHW feature maps to class logits (B, num_classes, h, w) at the
    resolution of its finest input level; :class:`~cbsa_dense.models.segmentor.Segmentor` upsamples them.

    Attributes:
        in_channels: channels of each level the head reads (``in_index`` order).
        in_index: indices of the encoder outputs the head reads.
        num_classes: number of output classes.
    """

    in_channels: list[int]
    in_index: list[int]
    num_classes: int

    def _set_inputs(self, in_channels: int | Sequence[int], in_index: int | Sequence[int],
                    num_classes: int) -> None:
        """``in_channels``: the channels of every encoder output (an int = a single output)."""
        levels = [int(in_channels)] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        self.in_index = [in_index] if isinstance(in_index, int) else list(in_index)
        for index in self.in_index:
            if not -len(levels) <= index < len(levels):
                raise ConfigError(f"{type(self).__name__} reads encoder output in_index={index} but the encoder "
                                  f"has {len(levels)} outputs (out_channels={levels}); use an index in "
                                  f"[-{len(levels)}, {len(levels)}) or add out_indices to the encoder")
        self.in_channels = [levels[i] for i in self.in_index]
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


#: ``head(in_channels: list[int] (every encoder output), num_classes: int) -> SegHead``: a head class
#: (``CBTDecoder``) or a partial of one; under the CLI, ``{class_path: CBTDecoder, init_args: {...}}``.
SegHeadFactory = Callable[[list[int], int], SegHead]
