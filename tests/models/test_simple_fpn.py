"""Simple feature pyramid: levels, shapes, declared channels/strides, input checks; any patch size."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from cbsa_dense.errors import ConfigError
from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.detector import Detector
from cbsa_dense.models.encoders import ViTEncoder
from cbsa_dense.models.heads.det_faster_rcnn import pyramid_roi_align
from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid
from tests.models.test_detector import HEADS  # the small configuration of every detection head


@pytest.mark.parametrize("in_stride, strides", [(16, (8, 16, 32, 64)), (8, (8, 16, 32)), (16, (4, 8, 16, 32))])
def test_levels_have_declared_strides_and_channels(in_stride, strides):
    neck = SimpleFeaturePyramid(48, in_stride, out_channels=32, strides=strides)
    x = torch.randn(2, 48, 64 // in_stride * 2, 128 // in_stride * 2)
    out = neck(x)
    assert list(out) == [f"p{s.bit_length() - 1}" for s in strides] == neck.names
    for (name, feat), s in zip(out.items(), strides):
        assert feat.shape == (2, 32, x.shape[2] * in_stride // s, x.shape[3] * in_stride // s), name
    assert neck.out_channels == 32 and neck.strides == list(strides)
    out["p" + str(strides[0].bit_length() - 1)].sum().backward()


@pytest.mark.parametrize("in_stride, expected", [(16, [8, 16, 32, 64]), (14, [7, 14, 28, 56]), (8, [4, 8, 16, 32])])
def test_default_scales_follow_the_patch_size(in_stride, expected):
    neck = SimpleFeaturePyramid(32, in_stride, out_channels=32)
    assert neck.strides == expected and len(set(neck.names)) == 4
    out = neck(torch.randn(1, 32, 4, 6))
    assert [tuple(f.shape[-2:]) for f in out.values()] == [(8, 12), (4, 6), (2, 3), (1, 1)][:3] + [(1, 1)]


def test_bad_configurations_are_named():
    with pytest.raises(ConfigError, match="power-of-two.*use scales"):
        SimpleFeaturePyramid(64, 16, strides=(8, 24))
    with pytest.raises(ConfigError, match=r"strides=\[8, 16, 32, 64\].*stride 8 is not.*encoder stride 14"):
        SimpleFeaturePyramid(64, 14, strides=(8, 16, 32, 64))
    with pytest.raises(ConfigError, match="increasing"):
        SimpleFeaturePyramid(64, 16, strides=(32, 16))
    with pytest.raises(ConfigError, match="fractional stride 3.5"):
        SimpleFeaturePyramid(64, 14, scales=(4.0, 2.0))
    with pytest.raises(ConfigError, match="not a power of two"):
        SimpleFeaturePyramid(64, 16, scales=(3.0, 1.0))
    with pytest.raises(ConfigError, match="decreasing"):
        SimpleFeaturePyramid(64, 16, scales=(0.5, 1.0))
    neck = SimpleFeaturePyramid(64, 16, out_channels=32)
    with pytest.raises(ValueError, match=r"expects \(B, 64, H, W\)"):
        neck(torch.randn(1, 32, 4, 4))


def test_roi_align_uses_exact_scales_for_non_power_of_two_strides():
    pool = pyramid_roi_align([7, 14, 28, 56], 7)
    assert pool.scales == [1 / 7, 1 / 14, 1 / 28, 1 / 56]
    # a 196-pixel box (224 * 7 / 8) goes to the stride-14 level as a 224 box goes to stride 16
    assert pool.map_levels([torch.tensor([[0.0, 0.0, 196.0, 196.0]])]).tolist() == [1]
    standard = pyramid_roi_align([8, 16, 32, 64], 7)
    assert standard.map_levels([torch.tensor([[0.0, 0.0, 224.0, 224.0]])]).tolist() == [1]
    # pooling reads the features under the box: on a map whose value is the column index, a box centred
    # at x = 42 pixels pools 42 / 7 = 6 at stride 7 (a power-of-two guess, 1/8, would read 5.25)
    feats = {name: torch.arange(112 // s, dtype=torch.float32).expand(1, 1, 112 // s, -1).contiguous()
             for name, s in zip(["p2", "p3", "p4", "p5"], [7, 14, 28, 56])}
    out = pool(feats, [torch.tensor([[28.0, 28.0, 56.0, 56.0]])], [(100, 100)])
    assert out.shape == (1, 1, 7, 7) and abs(out.mean().item() - 6.0) < 0.1
    with pytest.raises(ConfigError, match="double"):
        pyramid_roi_align([8, 32], 7)




@pytest.mark.parametrize("name", list(HEADS))
def test_patch14_encoder_detects_with_every_head(name):
    """A DINOv2-style patch-14 encoder: the pyramid is at strides 7-56 and every torchvision head runs."""
    torch.manual_seed(0)
    encoder = ViTEncoder(img_size=56, patch_size=14, embed_dim=32, depth=1, num_heads=2,
                         attn_layer=partial(CBSAAttention, grid=(2, 2), variant="qkv"))
    detector = Detector(encoder, partial(SimpleFeaturePyramid, out_channels=32), HEADS[name], 3)
    assert detector.neck.strides == [7, 14, 28, 56] and detector.size_divisible == 56
    images = torch.randn(2, 3, 60, 70)
    masks = torch.zeros(1, 60, 70, dtype=torch.uint8)
    masks[0, 10:40, 5:45] = 1
    targets = [{"boxes": torch.tensor([[5.0, 10, 45, 40]]), "labels": torch.tensor([1]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 60, 70, dtype=torch.uint8)}]
    losses = detector(images, [(60, 70), (50, 60)], targets)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    detector.eval()
    with torch.no_grad():
        detections = detector(images, [(60, 70), (50, 60)])
    assert len(detections) == 2 and all(d["boxes"].shape[1] == 4 for d in detections)
