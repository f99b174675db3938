"""Attention in windows of the patch grid (:mod:`cbsa_dense.layers.windows`)."""

from __future__ import annotations

import pytest
import torch

from cbsa_dense.errors import ConfigError
from cbsa_dense.layers import CBSAAttention, SoftmaxAttention
from cbsa_dense.layers.windows import WindowedAttention, attention_windows, window_spans


@pytest.mark.parametrize("length,window", [(7, 3), (16, 16), (89, 16), (74, 16), (5, 16), (23, 16), (32, 16)])
def test_windows_are_the_asked_size_and_keep_every_token_once(length, window):
    spans = window_spans(length, window)
    kept = [i for _, keep_from, keep_to in spans for i in range(keep_from, keep_to)]
    assert kept == list(range(length))                                  # every token from exactly one window
    size = min(window, length)
    assert all(0 <= start and start + size <= length and start <= keep_from < keep_to <= start + size
               for start, keep_from, keep_to in spans)
    assert len(spans) == -(-length // window)


def _layer(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "cbsa":
        layer = CBSAAttention(16, 2, grid=(2, 2), variant="qkv", broadcast="query", local_kernel=3)
        torch.nn.init.normal_(layer.local.weight, std=0.2)       # the local term is zero at init
        return layer.eval()
    return SoftmaxAttention(16, 2).eval()


@pytest.mark.parametrize("kind", ["cbsa", "softmax"])
def test_each_window_is_attended_alone_and_the_class_token_averages(kind):
    layer = _layer(kind)
    windowed = WindowedAttention(layer, (3, 4))
    h, w = 6, 8                                              # 2x2 windows of 3x4 tokens
    x = torch.randn(2, 1 + h * w, 16)
    with torch.no_grad():
        out = windowed(x, (h, w), 1)
        patches = x[:, 1:].unflatten(1, (h, w))
        outs, cls = out[:, 1:].unflatten(1, (h, w)), []
        for top in (0, 3):
            for left in (0, 4):
                window = patches[:, top:top + 3, left:left + 4].flatten(1, 2)
                alone = layer(torch.cat([x[:, :1], window], 1), (3, 4), 1)
                torch.testing.assert_close(outs[:, top:top + 3, left:left + 4], alone[:, 1:].unflatten(1, (3, 4)))
                cls.append(alone[:, :1])
        torch.testing.assert_close(out[:, :1], torch.stack(cls).mean(0))
        changed = patches.clone()
        changed[:, :3, :4] += 1.0                            # the top-left window only
        again = windowed(torch.cat([x[:, :1], changed.flatten(1, 2)], 1), (h, w), 1)[:, 1:].unflatten(1, (h, w))
        assert not torch.allclose(again[:, :3, :4], outs[:, :3, :4])
        torch.testing.assert_close(again[:, 3:], outs[:, 3:])
        torch.testing.assert_close(again[:, :3, 4:], outs[:, :3, 4:])
        plain = layer(x, (h, w), 1)
        assert not torch.allclose(out, plain)                # the windows changed what a token sees
        torch.testing.assert_close(WindowedAttention(layer, (6, 8))(x, (h, w), 1), plain)   # one window: the layer
        # 6x8 in 4x5 windows: the last row and column of windows end at the grid's edge, overlapping their
        # neighbours, and give only the tokens no earlier window gave
        uneven = WindowedAttention(layer, (4, 5))(x, (h, w), 1)[:, 1:].unflatten(1, (h, w))
        corner = layer(torch.cat([x[:, :1], patches[:, 2:, 3:].flatten(1, 2)], 1), (4, 5), 1)[:, 1:]
        torch.testing.assert_close(uneven[:, 4:, 5:], corner.unflatten(1, (4, 5))[:, 2:, 2:])
        first = layer(torch.cat([x[:, :1], patches[:, :4, :5].flatten(1, 2)], 1), (4, 5), 1)[:, 1:]
        torch.testing.assert_close(uneven[:, :4, :5], first.unflatten(1, (4, 5)))


def test_attention_windows_puts_back_the_layers_even_after_an_error():
    from cbsa_dense.models.encoders import ViTEncoder

    encoder = ViTEncoder(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2)
    layers = [block.attn for block in encoder.blocks]
    with pytest.raises(RuntimeError, match="inside"):
        with attention_windows(encoder, 17):                 # 2 tokens a side at patch 8
            assert all(isinstance(b.attn, WindowedAttention) and b.attn.window == (2, 2) for b in encoder.blocks)
            raise RuntimeError("inside")
    assert [block.attn for block in encoder.blocks] == layers
    with pytest.raises(ConfigError, match="windowed needs an encoder of transformer blocks"):
        with attention_windows(torch.nn.Conv2d(3, 3, 1), 32):
            pass
