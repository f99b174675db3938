"""FCOS (Tian et al., 2019) as a detection head over a feature pyramid, from torchvision."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.fcos import FCOSHead as _TVFCOSHead
from torchvision.models.detection.image_list import ImageList

from cbsa_dense.errors import ConfigError
from cbsa_dense.models.heads.det_common import ChannelsStub, DetHead, check_head_inputs

#: How the regression conv's output becomes the 4 box distances (in strides), before torchvision's ReLU.
BOX_ACTIVATIONS = ("exp", "relu")


class ExpConv2d(nn.Conv2d):
    """A convolution whose output is exponentiated: FCOS's box distances ``exp(x)`` (Tian et al., ICCV 2019),
    positive with a gradient everywhere. Same parameters (and state-dict keys) as the conv it replaces."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(super().forward(x))


class FCOSHead(DetHead, FCOS):
    """Anchor-free FCOS head: torchvision's losses (focal, GIoU, centerness) and post-processing.

    Contract and target format: :mod:`cbsa_dense.models.heads.det_common`. One anchor point per location,
    sized like its level's stride, so FCOS assigns objects to levels by regression range (4x-8x stride).

    Args:
        in_channels: channels of every pyramid level (multiple of 32: GroupNorm(32)).
        strides: strides of the pyramid levels, increasing.
        num_classes: object classes (no background).
        num_convs: 3x3 conv layers in each of the classification and regression towers.
        center_sampling_radius: positives within this many strides of a box center.
        score_thresh: minimum class score kept at inference (0.05 for mAP evaluation).
        nms_thresh: IoU of per-class NMS at inference.
        detections_per_img: detections kept per image (100 for COCO mAP).
        topk_candidates: best candidates per level before NMS.
        box_activation: ``"exp"`` (the FCOS paper's ``exp(x)``, default) or ``"relu"`` (torchvision's). With
            ReLU a distance whose output turns negative everywhere gets no gradient again: on real trees one run
            in four ended with every box's left distance at 0 (AP50 0.03, docs/real_photos.md; FCOS issue
            tianzhi0549/FCOS#310 reports the same). Checkpoints written before this option load as ``"relu"``.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, num_convs: int = 4,
                 center_sampling_radius: float = 1.5, score_thresh: float = 0.05, nms_thresh: float = 0.6,
                 detections_per_img: int = 100, topk_candidates: int = 1000, box_activation: str = "exp") -> None:
        check_head_inputs("FCOSHead", in_channels, strides, num_classes, group_norm=True)
        if box_activation not in BOX_ACTIVATIONS:
            raise ConfigError(f"FCOSHead box_activation={box_activation!r}: give one of {', '.join(BOX_ACTIVATIONS)}")
        anchors = AnchorGenerator(tuple((int(s),) for s in strides), ((1.0,),) * len(strides))
        head = _TVFCOSHead(in_channels, 1, num_classes, num_convs=num_convs)
        if box_activation == "exp":            # torchvision's ReLU after it is then the identity
            plain = head.regression_head.bbox_reg
            head.regression_head.bbox_reg = ExpConv2d(plain.in_channels, plain.out_channels, plain.kernel_size,
                                                      plain.stride, plain.padding)
            head.regression_head.bbox_reg.load_state_dict(plain.state_dict())    # torchvision's init
        super().__init__(ChannelsStub(in_channels), num_classes, anchor_generator=anchors, head=head,
                         center_sampling_radius=center_sampling_radius, score_thresh=score_thresh,
                         nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                         topk_candidates=topk_candidates)
        del self.backbone, self.transform
        self.num_classes = num_classes
        self.strides = list(strides)
        self.box_activation = box_activation

    def forward(self, images: ImageList, features: OrderedDict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None):
        """Losses (training) or detections (eval) for a padded batch; see the module contract."""
        feats = list(features.values())
        head_outputs = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_per_level = [f.shape[2] * f.shape[3] for f in feats]
        if self.training:
            if targets is None:
                raise ValueError("FCOSHead needs targets in training mode")
            return self.compute_loss(targets, head_outputs, anchors, num_per_level)
        split_outputs = {k: list(v.split(num_per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(num_per_level)) for a in anchors]
        return self.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
