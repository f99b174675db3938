"""CBT decoder (mask transformer with CBSA layers) and the linear head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cbsa_dense.layers import CBSAAttention, SoftmaxAttention
from cbsa_dense.models.heads.cbt_decoder import CBTDecoder
from cbsa_dense.models.heads.linear_head import LinearHead


class Recorder(nn.Module):
    """Attention stand-in recording the layout it is called with (returns zeros: identity layer)."""

    calls: list = []

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads

    def forward(self, x, grid, num_prefix_tokens=0):
        Recorder.calls.append((tuple(x.shape), tuple(grid), num_prefix_tokens, x[:, -1].clone()))
        return torch.zeros_like(x)


def test_class_embeddings_follow_the_patches_and_grid_is_passed():
    Recorder.calls = []
    head = CBTDecoder(24, num_classes=4, n_layers=2, num_heads=3, attn_layer=Recorder)
    out = head([torch.randn(2, 24, 3, 5)])
    assert out.shape == (2, 4, 3, 5)
    assert len(Recorder.calls) == 2
    shape, grid, prefix, last = Recorder.calls[0]
    assert shape == (2, 15 + 4, 24) and grid == (3, 5) and prefix == 0
    norm = head.layers[0].norm
    torch.testing.assert_close(last, norm(head.cls_emb[:, -1]).expand(2, -1))   # last token = last class embedding


def test_paper_default_and_mask_layernorm_over_classes():
    head = CBTDecoder(32, num_classes=6, n_layers=1)
    attn = head.layers[0].attn
    assert isinstance(attn, CBSAAttention) and attn.num_heads == 3 and attn.head_dim == 100 and attn.grid == (10, 10)
    assert {n.removeprefix("attn.") for n, _ in head.layers[0].named_parameters()} >= {"qkv.weight", "proj.weight",
                                                                                  "step_x", "step_rep"}
    logits = head([torch.randn(1, 32, 7, 9)])
    torch.testing.assert_close(logits.mean(dim=1), torch.zeros(1, 7, 9), atol=1e-5, rtol=0)  # mask_norm: LN over C
    assert logits.shape == (1, 6, 7, 9)
    logits.sum().backward()
    assert head.cls_emb.grad is not None and attn.step_x.grad is not None


def test_segmenter_baseline_by_injecting_softmax_attention():
    head = CBTDecoder(48, num_classes=3, n_layers=2, num_heads=4, attn_layer=SoftmaxAttention, embed_dim=64,
                      mlp_ratio=4.0, proj_out=True)
    assert isinstance(head.layers[0].attn, SoftmaxAttention) and head.proj_dec.out_features == 64
    assert head.proj_patch.shape == (64, 64) and hasattr(head.layers[0], "mlp")
    assert head([torch.randn(2, 48, 4, 6)]).shape == (2, 3, 4, 6)


def test_input_checks_name_both_numbers():
    head = CBTDecoder(24, num_classes=4, n_layers=1, num_heads=3, attn_layer=Recorder)
    with pytest.raises(ValueError, match="expects 24 channels .* gives 32"):
        head.check_inputs([32])
    linear = LinearHead(16, 5, in_index=0)
    assert linear([torch.randn(2, 16, 3, 4), torch.randn(2, 8, 2, 2)]).shape == (2, 5, 3, 4)
    with pytest.raises(ValueError, match="in_index=2 but the encoder has 1 outputs"):
        LinearHead(16, 5, in_index=2)
    with pytest.raises(ValueError, match="reads encoder output 2"):
        LinearHead([16, 16, 16], 5, in_index=2).check_inputs([16])
