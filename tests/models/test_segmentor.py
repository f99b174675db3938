"""Segmentor (encoder + head, upsampling with Segmenter's padding convention) and sliding-window inference."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.encoders import ViTEncoder
from cbsa_dense.models.heads.cbt_decoder import CBTDecoder
from cbsa_dense.models.heads.linear_head import LinearHead
from cbsa_dense.models.segmentor import Segmentor
from cbsa_dense.tasks.sliding_window import SlidingWindowInference


def cbsa(dim, heads):
    return CBSAAttention(dim, heads, grid=(2, 2))


def tiny_encoder(dim=16):
    return ViTEncoder(img_size=32, patch_size=8, embed_dim=dim, depth=1, num_heads=2, attn_layer=cbsa)


@pytest.mark.parametrize("size", [(32, 32), (27, 45), (8, 70)])
def test_any_input_size(size):
    model = Segmentor(tiny_encoder(), partial(CBTDecoder, n_layers=1, num_heads=2, attn_layer=cbsa), 3).eval()
    assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def test_upsamples_to_the_padded_size_then_crops():
    encoder = tiny_encoder()
    model = Segmentor(encoder, LinearHead, 4).eval()
    x = torch.randn(1, 3, 20, 30)                       # padded to 24 x 32 (grid 3 x 4)
    with torch.no_grad():
        expected = F.interpolate(model.head(encoder(x)), size=(24, 32), mode="bilinear", align_corners=False)[..., :20, :30]
        torch.testing.assert_close(model(x), expected)


def test_head_is_built_from_the_encoder_outputs():
    encoder = ViTEncoder(img_size=32, patch_size=8, embed_dim=24, depth=3, num_heads=2, attn_layer=cbsa,
                         out_indices=(1, 2))
    model = Segmentor(encoder, partial(LinearHead, in_index=0), 5)
    assert model.head.in_channels == [24] and model.head.classifier.weight.shape == (5, 24, 1, 1)
    assert model.num_classes == 5 and [tuple(f) for f in encoder.feature_info] == [(24, 8), (24, 8)]


def test_head_reading_a_missing_encoder_output_names_the_index():
    with pytest.raises(ValueError, match="in_index=3 but the encoder has 1 outputs"):
        Segmentor(tiny_encoder(16), partial(LinearHead, in_index=3), 3)


def test_a_built_head_is_refused():
    with pytest.raises(ValueError, match="head factory"):
        Segmentor(tiny_encoder(16), LinearHead(16, 3), 3)


def test_channel_mismatch_of_a_directly_built_head_names_both_numbers():
    with pytest.raises(ValueError, match="expects 24 channels .* gives 16"):
        LinearHead(24, 3).check_inputs([16])


class PerPixel(nn.Module):
    """A per-pixel model (1x1 conv): sliding windows must reproduce the whole-image result exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.conv(x)


def test_sliding_window_matches_whole_image_for_a_per_pixel_model():
    model = PerPixel()
    x = torch.randn(2, 3, 50, 70)
    whole = SlidingWindowInference()(model, x, 4)
    model.calls.clear()
    slid = SlidingWindowInference(window=(32, 32), stride=(21, 21), window_batch=3)(model, x, 4)
    torch.testing.assert_close(slid, whole)
    windows = sum(c[0] for c in model.calls) // 2
    assert windows == 2 * 3                            # mmseg: ceil((50-32)/21)+1 rows, ceil((70-32)/21)+1 cols
    assert all(c[-2:] == (32, 32) for c in model.calls)


def test_multiscale_flip_averages_probabilities_at_the_output_size():
    model = PerPixel()
    x = torch.randn(1, 3, 20, 24)
    probs = SlidingWindowInference(scales=(0.5, 1.0, 1.5), flip=True)(model, x, 4, out_size=(30, 36))
    assert probs.shape == (1, 4, 30, 36)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 30, 36))
    assert len(model.calls) == 6
    with pytest.raises(ValueError, match="scales"):
        SlidingWindowInference(scales=())


def test_uper_head_over_several_vit_levels():
    from cbsa_dense.models.heads.uper_head import UPerHead

    encoder = ViTEncoder(img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, attn_layer=cbsa,
                         out_indices=(0, 1, 2))
    model = Segmentor(encoder, partial(UPerHead, in_index=[0, 1, 2], channels=8, pool_scales=(1, 2),
                                       scales=[2, 1, 0.5]), 5)
    head = model.head
    out = model(torch.randn(2, 3, 40, 56))
    assert out.shape == (2, 5, 40, 56)
    out.mean().backward()
    assert encoder.blocks[0].attn.qkv.weight.grad is not None and head.lateral[0][0].weight.grad is not None
    with pytest.raises(ValueError, match="2 scales for 3 levels"):
        UPerHead([16, 16, 16], 5, in_index=[0, 1, 2], scales=[1, 1])


def test_linear_head_batch_norm_standardizes_the_channels():
    """``norm: batch`` (DINOv2's linear head): in training, rescaling and shifting a channel changes nothing;
    without it, the logits follow the raw scale."""
    torch.manual_seed(0)
    features = torch.randn(2, 8, 5, 5)
    skewed = features * torch.linspace(0.1, 50.0, 8).view(1, 8, 1, 1) + 3.0
    with_bn, plain = LinearHead(8, 3, norm="batch"), LinearHead(8, 3)
    torch.testing.assert_close(with_bn([skewed]), with_bn([features]), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain([skewed]), plain([features]), atol=1e-2)


def test_linear_head_refuses_an_unknown_norm():
    from cbsa_dense.errors import ConfigError

    with pytest.raises(ConfigError, match="norm='layer'"):
        LinearHead(8, 3, norm="layer")
