"""Faster R-CNN (Ren et al., 2015) as a detection head over a feature pyramid, from torchvision."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

from cbsa_dense.errors import ConfigError
from cbsa_dense.models.heads.det_common import ChannelsStub, DetHead, check_head_inputs, shift_labels
from cbsa_dense.models.necks.simple_fpn import level_name


def pyramid_roi_align(strides: Sequence[int], output_size: int) -> MultiScaleRoIAlign:
    """RoIAlign over the pyramid levels at ``strides`` with their exact scales ``1 / stride``.

    torchvision infers each level's scale from the feature and image sizes, rounded to a power of two
    (1/16 for a stride-14 map: boxes would be pooled 12% off); here the scales are fixed from the strides,
    and the FPN level mapper is anchored so that a box of ``224 * strides[0] / 2**k0`` pixels (224 for a
    stride-8 first level, 196 for stride 7) goes to the second level, as in torchvision for strides 8-64.
    The strides must double from level to level.
    """
    strides = [int(s) for s in strides]
    if any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ConfigError(f"R-CNN heads need pyramid strides that double from level to level, got {strides}")
    pool = MultiScaleRoIAlign(featmap_names=[level_name(s) for s in strides], output_size=output_size,
                              sampling_ratio=2)
    k_min = round(math.log2(strides[0]))
    pool.scales = [1.0 / s for s in strides]
    pool.map_levels = initLevelMapper(k_min, k_min + len(strides) - 1,
                                      canonical_scale=round(224 * strides[0] / 2 ** k_min), canonical_level=4)
    return pool


def rcnn_kwargs(in_channels: int, strides: Sequence[int], num_classes: int, anchor_scale: float,
                representation_size: int, rpn_post_nms_top_n_train: int, rpn_post_nms_top_n_test: int,
                box_score_thresh: float, box_nms_thresh: float, box_detections_per_img: int,
                box_batch_size_per_image: int) -> dict:
    """torchvision (Faster/Mask) R-CNN constructor arguments for a pyramid at ``strides``.

    ``num_classes`` excludes background; the box predictor gets ``num_classes + 1`` outputs.
    """
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    sizes = tuple((anchor_scale * s,) for s in strides)
    return {
        "rpn_anchor_generator": AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides)),
        "box_roi_pool": pyramid_roi_align(strides, 7),
        "box_head": TwoMLPHead(in_channels * 7 * 7, representation_size),
        "box_predictor": FastRCNNPredictor(representation_size, num_classes + 1),
        "rpn_post_nms_top_n_train": rpn_post_nms_top_n_train, "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
        "rpn_pre_nms_top_n_train": max(rpn_post_nms_top_n_train, 1000),
        "rpn_pre_nms_top_n_test": max(rpn_post_nms_top_n_test, 1000),
        "box_score_thresh": box_score_thresh, "box_nms_thresh": box_nms_thresh,
        "box_detections_per_img": box_detections_per_img, "box_batch_size_per_image": box_batch_size_per_image,
    }


def rcnn_forward(model, images: ImageList, features: OrderedDict[str, Tensor],
                 targets: list[dict[str, Tensor]] | None):
    """RPN + RoI heads of a torchvision R-CNN, labels shifted to/from the background-first convention."""
    if model.training and targets is None:
        raise ValueError(f"{type(model).__name__} needs targets in training mode")
    targets = shift_labels(targets, 1)
    proposals, proposal_losses = model.rpn(images, features, targets)
    detections, detector_losses = model.roi_heads(features, proposals, images.image_sizes, targets)
    if model.training:
        return {**detector_losses, **proposal_losses}
    return shift_labels(detections, -1)


class FasterRCNNHead(DetHead, FasterRCNN):
    """Faster R-CNN head: RPN + RoIAlign box head, torchvision's losses and post-processing.

    Contract and target format: :mod:`cbsa_dense.models.heads.det_common` (labels 0..num_classes-1 here;
    the background class torchvision counts is added internally). The pyramid level names must be the
    neck's (``p{log2(stride)}``).

    Args:
        in_channels: channels of every pyramid level.
        strides: strides of the pyramid levels, increasing.
        num_classes: object classes (no background).
        anchor_scale: RPN anchor size in strides (aspect ratios 0.5, 1, 2).
        representation_size: width of the two-layer MLP box head.
        rpn_post_nms_top_n_train: proposals kept per image in training.
        rpn_post_nms_top_n_test: proposals kept per image at inference.
        box_score_thresh: minimum class score kept at inference.
        box_nms_thresh: IoU of per-class NMS at inference.
        box_detections_per_img: detections kept per image.
        box_batch_size_per_image: sampled RoIs per image for the box loss.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, anchor_scale: float = 4.0,
                 representation_size: int = 1024, rpn_post_nms_top_n_train: int = 2000,
                 rpn_post_nms_top_n_test: int = 1000, box_score_thresh: float = 0.05,
                 box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
                 box_batch_size_per_image: int = 512) -> None:
        check_head_inputs("FasterRCNNHead", in_channels, strides, num_classes, group_norm=False)
        super().__init__(ChannelsStub(in_channels), None, **rcnn_kwargs(
            in_channels, strides, num_classes, anchor_scale, representation_size, rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test, box_score_thresh, box_nms_thresh, box_detections_per_img,
            box_batch_size_per_image))
        del self.backbone, self.transform
        self.num_classes = num_classes
        self.strides = list(strides)

    def forward(self, images: ImageList, features: OrderedDict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None):
        """Losses (training) or detections (eval) for a padded batch; see the module contract."""
        return rcnn_forward(self, images, features, targets)
