"""Detector (encoder -> pyramid -> torchvision head): every head trains and predicts; coordinates map back."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.detector import Detector
from cbsa_dense.models.encoders import ViTEncoder
from cbsa_dense.models.heads.det_faster_rcnn import FasterRCNNHead
from cbsa_dense.models.heads.det_fcos import FCOSHead
from cbsa_dense.models.heads.det_mask_rcnn import MaskRCNNHead
from cbsa_dense.models.heads.det_retinanet import RetinaNetHead
from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid

HEADS = {
    "fcos": partial(FCOSHead, num_convs=1),
    "retinanet": RetinaNetHead,
    "faster_rcnn": partial(FasterRCNNHead, representation_size=32, rpn_post_nms_top_n_train=50,
                           rpn_post_nms_top_n_test=50, box_batch_size_per_image=32),
    "mask_rcnn": partial(MaskRCNNHead, representation_size=32, mask_layers=(16,), rpn_post_nms_top_n_train=50,
                         rpn_post_nms_top_n_test=50, box_batch_size_per_image=32),
}


def _detector(head, num_classes=3):
    encoder = ViTEncoder(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         attn_layer=partial(CBSAAttention, grid=(2, 2)))
    return Detector(encoder, partial(SimpleFeaturePyramid, out_channels=32, strides=(8, 16, 32)), head, num_classes)


def _targets():
    masks = torch.zeros(2, 60, 60, dtype=torch.uint8)
    masks[0, 10:30, 5:25] = 1
    masks[1, 30:50, 30:58] = 1
    return [{"boxes": torch.tensor([[5.0, 10, 25, 30], [30, 30, 58, 50]]), "labels": torch.tensor([0, 2]),
             "masks": masks},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 60, 60, dtype=torch.uint8)}]


@pytest.mark.parametrize("name", ["fcos", "mask_rcnn", pytest.param("retinanet", marks=pytest.mark.slow),
                                  pytest.param("faster_rcnn", marks=pytest.mark.slow)])
def test_every_head_trains_and_predicts_on_odd_sizes(name):
    torch.manual_seed(0)
    detector = _detector(HEADS[name])
    assert detector.with_masks == (name == "mask_rcnn")
    images = torch.randn(2, 3, 60, 60)  # padded inside to a multiple of 32
    losses = detector(images, [(60, 60), (40, 60)], _targets())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert detector.encoder.blocks[0].attn is not None and any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in detector.encoder.parameters())
    detector.eval()
    with torch.no_grad():
        detections = detector(images, [(60, 60), (40, 60)])
    for det in detections:
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])
        assert det["labels"].numel() == 0 or (0 <= det["labels"].min() and det["labels"].max() < 3)


def test_postprocess_maps_boxes_and_masks_to_original_pixels():
    det = [{"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1]), "masks": torch.ones(1, 1, 28, 28)}]
    out = Detector.postprocess(det, [(0.5, 0.25)], [(100, 150)])[0]
    assert out["boxes"].tolist() == [[40.0, 40.0, 150.0, 100.0]]  # x / 0.25, y / 0.5, clipped to width 150
    assert out["masks"].shape == (1, 100, 150) and out["masks"].dtype == torch.bool
    assert out["masks"][0, 50, 100] and not out["masks"][0, 10, 10]


def test_heads_reject_bad_inputs():
    with pytest.raises(ValueError, match="divisible by 32"):
        FCOSHead(48, [8, 16], 3)
    with pytest.raises(ValueError, match="num_classes"):
        RetinaNetHead(32, [8], 0)
    detector = _detector(HEADS["fcos"])
    with pytest.raises(ValueError, match="needs targets"):
        detector(torch.randn(1, 3, 32, 32), [(32, 32)])


def test_fcos_box_distances_keep_a_gradient_where_relu_has_none():
    """torchvision's ReLU gives a distance whose conv output is negative neither a value nor a gradient (a
    real run ended with every box's left side at 0); exp (the FCOS paper's, the default) gives both."""
    from cbsa_dense.models.heads.det_fcos import ExpConv2d

    torch.manual_seed(0)
    features = [torch.randn(2, 32, 6, 6)]
    for activation, expect_dead in (("relu", True), ("exp", False)):
        head = FCOSHead(32, [8], 1, num_convs=1, box_activation=activation).head.regression_head
        assert (type(head.bbox_reg) is ExpConv2d) is (activation == "exp")
        with torch.no_grad():
            head.bbox_reg.bias[0] = -10.0                # the left distance's output is negative everywhere
        distances, _ = head(features)
        distances[..., 0].sum().backward()
        grad = head.bbox_reg.bias.grad[0]
        assert bool(grad == 0) is expect_dead, (activation, grad)
        assert bool((distances[..., 0] == 0).all()) is expect_dead   # every box's left side at 0, or none
    with pytest.raises(Exception, match="box_activation='softplus'"):
        FCOSHead(32, [8], 1, box_activation="softplus")
