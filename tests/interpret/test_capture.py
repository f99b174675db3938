import pytest
import torch

from cbsa_dense.interpret import capture_extractions, token_affinity
from cbsa_dense.layers import CBSAAttention, SoftmaxAttention
from cbsa_dense.models.encoders import ViTEncoder


def _encoder():
    return ViTEncoder(img_size=64, embed_dim=32, depth=3, num_heads=2, reg_tokens=1,
                      attn_layer=lambda d, h: CBSAAttention(d, h, grid=(2, 3)),
                      alt_attn_layer=SoftmaxAttention, alt_attn_blocks=[1]).eval()


def test_capture_records_extraction_without_changing_output():
    enc = _encoder()
    x = torch.randn(2, 3, 48, 80)
    plain = enc(x)[0]
    with capture_extractions(enc) as records:
        captured = enc(x)[0]
    torch.testing.assert_close(captured, plain)
    assert [r.name for r in records] == ["blocks.0.attn", "blocks.2.attn"]     # softmax block skipped
    rec = records[-1]
    assert rec.extraction.shape == (2, 2, 6, 2 + 3 * 5) and rec.grid == (3, 5) and rec.num_prefix_tokens == 2
    torch.testing.assert_close(rec.extraction.sum(-1), torch.ones(2, 2, 6))      # softmax over tokens
    assert rec.patch_maps().shape == (2, 2, 6, 3, 5)
    enc(x)
    assert len(records) == 2                                                     # hooks removed on exit


def test_layer_selection_and_errors():
    enc = _encoder()
    with capture_extractions(enc, layers=[-1]) as records:
        enc(torch.randn(1, 3, 32, 32))
    assert [r.name for r in records] == ["blocks.2.attn"]
    with pytest.raises(ValueError, match="out of range"), capture_extractions(enc, layers=[5]):
        pass
    with pytest.raises(ValueError, match="no CBSA"), capture_extractions(ViTEncoder(embed_dim=32, depth=1, num_heads=2)):
        pass


def test_token_affinity_equals_dense_product():
    a = torch.rand(2, 3, 4, 10).softmax(-1)
    dense = a.transpose(-2, -1) @ a
    torch.testing.assert_close(token_affinity(a, [0, 7]), dense[..., [0, 7], :])
