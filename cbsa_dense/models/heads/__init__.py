"""Heads. Segmentation: ``head(in_channels, num_classes) -> SegHead``; detection: ``head(in_channels, strides,
num_classes) -> DetHead``; both built by the model from what the encoder (or neck) declares."""

from cbsa_dense.models.heads.cbt_decoder import CBTDecoder
from cbsa_dense.models.heads.det_common import DetHead
from cbsa_dense.models.heads.det_faster_rcnn import FasterRCNNHead
from cbsa_dense.models.heads.det_fcos import FCOSHead
from cbsa_dense.models.heads.det_mask_rcnn import MaskRCNNHead
from cbsa_dense.models.heads.det_retinanet import RetinaNetHead
from cbsa_dense.models.heads.linear_head import LinearHead
from cbsa_dense.models.heads.seg_head_base import SegHead
from cbsa_dense.models.heads.uper_head import UPerHead

__all__ = ["CBTDecoder", "DetHead", "FCOSHead", "FasterRCNNHead", "LinearHead", "MaskRCNNHead", "RetinaNetHead",
           "SegHead", "UPerHead"]
