import pytest
import torch

from cbsa_dense.layers import CBSAAttention, SoftmaxAttention
from tests.layers.reference_cbsa import reference_cbsa


def _tokens(b, grid, prefix, suffix, dim):
    return torch.randn(b, prefix + grid[0] * grid[1] + suffix, dim)


@pytest.mark.parametrize(
    "kwargs, grid, prefix, suffix",
    [
        ({}, (32, 48), 1, 150),                                      # the decoder-like case
        ({"grid": (8, 8)}, (5, 7), 0, 0),                           # patch grid smaller than rep grid
        ({"head_dim": 20, "grid": (3, 2)}, (9, 6), 4, 2),           # inner width != dim, registers
        ({"variant": "qkv"}, (6, 10), 1, 0),
        ({"variant": "qkv", "broadcast": "query"}, (6, 10), 1, 3),
        ({"broadcast": "query"}, (7, 3), 0, 5),
        ({"tied_output": True, "grid": (2, 3)}, (4, 9), 1, 1),
        ({"legacy_shifted_grid": True}, (8, 8), 1, 0),
    ],
)
def test_matches_literal_reference(kwargs, grid, prefix, suffix):
    layer = CBSAAttention(48, num_heads=3, **kwargs)
    x = _tokens(2, grid, prefix, suffix, 48)
    out = layer(x, grid, prefix)
    assert out.shape == x.shape
    torch.testing.assert_close(out, reference_cbsa(layer, x, grid, prefix), atol=2e-5, rtol=1e-4)


def test_suffix_and_prefix_tokens_are_not_pooled_but_receive_broadcast():
    layer = CBSAAttention(32, num_heads=2, grid=(2, 2))
    grid = (4, 4)
    x = _tokens(1, grid, 1, 3, 32)
    reps = layer._pool(layer.qkv(x), grid, 1)
    x2 = x.clone()
    x2[:, 0] += 5.0
    x2[:, -3:] += 5.0
    torch.testing.assert_close(layer._pool(layer.qkv(x2), grid, 1), reps)   # pooling ignores them
    out = layer(x, grid, 1)
    assert out[:, 0].abs().sum() > 0 and out[:, -3:].abs().sum() > 0        # but they get the broadcast


def test_legacy_grid_reproduces_shift_by_one_token():
    """The released code pools tokens[:, :-1] with the CLS first: CLS + all patches but the last."""
    grid = (4, 4)
    legacy = CBSAAttention(32, num_heads=2, grid=(2, 2), legacy_shifted_grid=True)
    fixed = CBSAAttention(32, num_heads=2, grid=(2, 2))
    fixed.load_state_dict(legacy.state_dict())
    x = _tokens(1, grid, 1, 0, 32)
    w = legacy.qkv(x)
    shifted = torch.nn.functional.adaptive_avg_pool2d(w[:, :-1].transpose(1, 2).reshape(1, 32, 4, 4), (2, 2))
    expected = shifted.reshape(1, 2, 16, 4).transpose(-2, -1)
    torch.testing.assert_close(legacy._pool(w, grid, 1), expected)
    assert not torch.allclose(legacy(x, grid, 1), fixed(x, grid, 1))
    # With the CLS moved to the end the legacy layer computes what the fixed layer does.
    x_cls_last = torch.cat([x[:, 1:], x[:, :1]], dim=1)
    torch.testing.assert_close(legacy(x_cls_last, grid, 0)[:, :-1], fixed(x, grid, 1)[:, 1:], atol=1e-5, rtol=1e-4)


def test_every_token_its_own_representative_is_tied_softmax_attention():
    dim, heads = 32, 4
    cbsa = CBSAAttention(dim, num_heads=heads, grid=None, step_init=1.0)
    softmax = SoftmaxAttention(dim, num_heads=heads, qkv_bias=False)
    with torch.no_grad():
        softmax.qkv.weight.copy_(cbsa.qkv.weight.repeat(3, 1))             # q = k = v = w
        softmax.proj.load_state_dict(cbsa.proj.state_dict())
    x = _tokens(2, (3, 5), 1, 2, dim)
    torch.testing.assert_close(cbsa(x, (3, 5), 1), softmax(x, (3, 5), 1), atol=1e-5, rtol=1e-4)


def test_gradients_reach_step_sizes_and_projections():
    layer = CBSAAttention(32, num_heads=2, grid=(3, 3))
    x = _tokens(2, (6, 7), 1, 2, 32).requires_grad_()
    layer(x, (6, 7), 1).square().mean().backward()
    for name in ("step_x", "step_rep", "qkv.weight", "proj.weight"):
        grad = layer.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_step_init_options():
    assert torch.all(CBSAAttention(16, 2, step_init=0.1).step_x == 0.1)
    torch.manual_seed(1)
    released = CBSAAttention(64, 64, step_init=None)
    assert (released.step_x < 0).any() and (released.step_x > 0).any()     # N(0, 1): sign is learned


def test_bf16_autocast_is_finite():
    layer = CBSAAttention(32, num_heads=2, grid=(4, 4))
    x = _tokens(1, (16, 16), 1, 0, 32) * 30
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, (16, 16), 1)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("grid, prefix", [((5, 5), 0), ((4, 4), 2), ((0, 4), 0)])
def test_bad_layout_raises_with_numbers(grid, prefix):
    layer = CBSAAttention(16, 2)
    with pytest.raises(ValueError, match="grid|tokens"):
        layer(torch.randn(1, 17, 16), grid, prefix)


def test_invalid_options_raise():
    with pytest.raises(ValueError, match="variant"):
        CBSAAttention(16, 2, variant="bogus")
    with pytest.raises(ValueError, match="tied_output"):
        CBSAAttention(16, 2, variant="qkv", tied_output=True)
    with pytest.raises(ValueError, match="divisible"):
        CBSAAttention(10, 3)
