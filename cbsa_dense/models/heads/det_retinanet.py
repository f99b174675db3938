"""RetinaNet (Lin et al., 2017) as a detection head over a feature pyramid, from torchvision."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead as _TVRetinaNetHead

from cbsa_dense.models.heads.det_common import ChannelsStub, DetHead, check_head_inputs


class RetinaNetHead(DetHead, RetinaNet):
    """RetinaNet head (torchvision's v2 head with GroupNorm): focal loss, GIoU box loss, anchors.

    Contract and target format: :mod:`cbsa_dense.models.heads.det_common`. Anchors per level: sizes
    ``anchor_scale * stride * 2**(k/3)`` for k = 0, 1, 2 and the given aspect ratios.

    Args:
        in_channels: channels of every pyramid level (multiple of 32: GroupNorm(32)).
        strides: strides of the pyramid levels, increasing.
        num_classes: object classes (no background).
        anchor_scale: anchor size in strides (4 in RetinaNet).
        aspect_ratios: anchor height/width ratios.
        score_thresh: minimum class score kept at inference.
        nms_thresh: IoU of per-class NMS at inference.
        detections_per_img: detections kept per image.
        topk_candidates: best candidates per level before NMS.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, anchor_scale: float = 4.0,
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, topk_candidates: int = 1000) -> None:
        check_head_inputs("RetinaNetHead", in_channels, strides, num_classes, group_norm=True)
        sizes = tuple(tuple(anchor_scale * s * 2 ** (k / 3) for k in range(3)) for s in strides)
        anchors = AnchorGenerator(sizes, (tuple(aspect_ratios),) * len(strides))
        head = _TVRetinaNetHead(in_channels, anchors.num_anchors_per_location()[0], num_classes,
                                norm_layer=partial(nn.GroupNorm, 32))
        head.regression_head._loss_type = "giou"
        super().__init__(ChannelsStub(in_channels), num_classes, anchor_generator=anchors, head=head,
                         score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                         topk_candidates=topk_candidates)
        del self.backbone, self.transform
        self.num_classes = num_classes
        self.strides = list(strides)

    def forward(self, images: ImageList, features: OrderedDict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None):
        """Losses (training) or detections (eval) for a padded batch; see the module contract."""
        feats = list(features.values())
        head_outputs = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        if self.training:
            if targets is None:
                raise ValueError("RetinaNetHead needs targets in training mode")
            return self.compute_loss(targets, head_outputs, anchors)
        num_anchors = self.anchor_generator.num_anchors_per_location()[0]
        num_per_level = [f.shape[2] * f.shape[3] * num_anchors for f in feats]
        split_outputs = {k: list(v.split(num_per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(num_per_level)) for a in anchors]
        return self.postprocess_detections(split_outputs, split_anchors, images.image_sizes)
