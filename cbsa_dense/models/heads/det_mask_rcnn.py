"""Mask R-CNN (He et al., 2017) as a detection + instance-mask head over a feature pyramid, from torchvision."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor

from cbsa_dense.errors import ConfigError
from cbsa_dense.models.heads.det_common import ChannelsStub, DetHead, check_head_inputs
from cbsa_dense.models.heads.det_faster_rcnn import pyramid_roi_align, rcnn_forward, rcnn_kwargs


class MaskRCNNHead(DetHead, MaskRCNN):
    """Mask R-CNN head: Faster R-CNN plus a 14x14 RoIAlign mask branch predicting 28x28 masks.

    Contract and target format: :mod:`cbsa_dense.models.heads.det_common`; in eval each image's
    ``"masks"`` are (N, 1, 28, 28) box-relative probabilities that the detector pastes into the image.

    Args:
        in_channels: channels of every pyramid level.
        strides: strides of the pyramid levels, increasing.
        num_classes: object classes (no background).
        anchor_scale: RPN anchor size in strides (aspect ratios 0.5, 1, 2).
        representation_size: width of the two-layer MLP box head.
        mask_layers: channels of the 3x3 convs of the mask branch (4 x 256 in Mask R-CNN).
        rpn_post_nms_top_n_train: proposals kept per image in training.
        rpn_post_nms_top_n_test: proposals kept per image at inference.
        box_score_thresh: minimum class score kept at inference.
        box_nms_thresh: IoU of per-class NMS at inference.
        box_detections_per_img: detections kept per image.
        box_batch_size_per_image: sampled RoIs per image for the box loss.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, anchor_scale: float = 4.0,
                 representation_size: int = 1024, mask_layers: Sequence[int] = (256, 256, 256, 256),
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                 box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
                 box_batch_size_per_image: int = 512) -> None:
        check_head_inputs("MaskRCNNHead", in_channels, strides, num_classes, group_norm=False)
        kwargs = rcnn_kwargs(in_channels, strides, num_classes, anchor_scale, representation_size, rpn_post_nms_top_n_train,
                             rpn_post_nms_top_n_test, box_score_thresh, box_nms_thresh, box_detections_per_img,
                             box_batch_size_per_image)
        mask_layers = tuple(int(c) for c in mask_layers)
        if not mask_layers:
            raise ConfigError("MaskRCNNHead: mask_layers needs at least one conv width")
        kwargs["mask_roi_pool"] = pyramid_roi_align(strides, 14)
        kwargs["mask_head"] = MaskRCNNHeads(in_channels, mask_layers, 1)
        kwargs["mask_predictor"] = MaskRCNNPredictor(mask_layers[-1], mask_layers[-1], num_classes + 1)
        super().__init__(ChannelsStub(in_channels), None, **kwargs)
        del self.backbone, self.transform
        self.num_classes = num_classes
        self.strides = list(strides)

    def forward(self, images: ImageList, features: OrderedDict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None):
        """Losses (training) or detections with box-relative masks (eval); see the module contract."""
        return rcnn_forward(self, images, features, targets)
