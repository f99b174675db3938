"""Heads. Segmentation: ``head(in_channels, num_classes) -> SegHead``; detection: ``head(in_channels, strides,
num_classes) -> DetHead``; both built by the model from what the encoder (or neck) declares.

The names below are imported from their modules on first use (:mod:`cbsa_dense.lazy`): a segmentation model
does not import torchvision's detection heads.
"""

from __future__ import annotations

from cbsa_dense.lazy import lazy_namespace

#: Public name -> the module defining it.
_HOMES = {
    "CBTDecoder": "cbsa_dense.models.heads.cbt_decoder",
    "DetHead": "cbsa_dense.models.heads.det_common",
    "FCOSHead": "cbsa_dense.models.heads.det_fcos",
    "FasterRCNNHead": "cbsa_dense.models.heads.det_faster_rcnn",
    "LinearHead": "cbsa_dense.models.heads.linear_head",
    "MaskRCNNHead": "cbsa_dense.models.heads.det_mask_rcnn",
    "RetinaNetHead": "cbsa_dense.models.heads.det_retinanet",
    "SegHead": "cbsa_dense.models.heads.seg_head_base",
    "UPerHead": "cbsa_dense.models.heads.uper_head",
}

__all__ = sorted(_HOMES)
__getattr__, __dir__ = lazy_namespace(__name__, _HOMES)
