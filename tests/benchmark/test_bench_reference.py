import pytest
import torch

from cbsa_dense.benchmark.reference import ReferenceCBSA
from cbsa_dense.layers import CBSAAttention


@pytest.mark.parametrize("batch, grid, rep_grid, prefix, suffix", [
    (1, (16, 16), (8, 8), 0, 0),
    (2, (12, 10), (4, 4), 1, 3),          # non-divisible grid (overlapping bins), CLS + suffix tokens
    (2, (8, 8), (2, 4), 2, 0),
])
def test_fast_layer_equals_authors_style_reference_values_and_gradients(batch, grid, rep_grid, prefix, suffix):
    layer = CBSAAttention(48, num_heads=3, grid=rep_grid)
    reference = ReferenceCBSA.from_layer(layer)
    x = torch.randn(batch, prefix + grid[0] * grid[1] + suffix, 48, requires_grad=True)
    out, ref = layer(x, grid, prefix), reference(x, grid, prefix)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), [x, *layer.parameters()])
    ref_grads = torch.autograd.grad((ref * weight).sum(), [x, *reference.parameters()])
    names = ["x"] + [name for name, _ in layer.named_parameters()]
    assert names[1:] == [name for name, _ in reference.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kwargs", [{"variant": "qkv"}, {"broadcast": "query"}, {"tied_output": True},
                                    {"grid": None}])
def test_reference_rejects_other_variants(kwargs):
    with pytest.raises(ValueError, match="ReferenceCBSA"):
        ReferenceCBSA.from_layer(CBSAAttention(32, 2, **kwargs))
