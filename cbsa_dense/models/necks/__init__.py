"""Detection necks: ``neck(in_channels, in_stride) -> Neck``, built from the encoder's last declared output."""

from cbsa_dense.models.necks.base import Neck
from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid

__all__ = ["Neck", "SimpleFeaturePyramid"]
