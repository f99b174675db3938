"""Simple feature pyramid: levels, shapes, declared channels/strides, input checks."""

from __future__ import annotations

import pytest
import torch

from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid


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


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="power-of-two"):
        SimpleFeaturePyramid(64, 16, strides=(8, 24))
    with pytest.raises(ValueError, match="increasing"):
        SimpleFeaturePyramid(64, 16, strides=(32, 16))
    neck = SimpleFeaturePyramid(64, 16, out_channels=32)
    with pytest.raises(ValueError, match=r"expects \(B, 64, H, W\)"):
        neck(torch.randn(1, 32, 4, 4))
