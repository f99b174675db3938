"""torch.compile compatibility of CBSA: whole-graph capture (no graph breaks) and equal results."""

import functools

import pytest
import torch

from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.encoders import ViTEncoder


def _compare_layer(backend: str, kwargs: dict, batch: int) -> None:
    torch._dynamo.reset()
    layer = CBSAAttention(32, num_heads=2, grid=(2, 2), **kwargs)
    x = torch.randn(batch, 1 + 36 + 2, 32, requires_grad=True)
    compiled = torch.compile(layer, backend=backend, fullgraph=True)      # fullgraph: a break is an error
    out, ref = compiled(x, (6, 6), 1), layer(x, (6, 6), 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), [x, layer.qkv.weight, layer.proj.weight])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, layer.qkv.weight, layer.proj.weight])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def _compare_encoder(backend: str) -> None:
    torch._dynamo.reset()
    encoder = ViTEncoder(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                         attn_layer=functools.partial(CBSAAttention, grid=(2, 2))).eval()
    images = torch.randn(1, 3, 64, 80)
    compiled = torch.compile(encoder, backend=backend, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images)[-1], encoder(images)[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, batch", [({}, 1), ({}, 2), ({"variant": "qkv"}, 2)])
def test_layer_traces_without_graph_breaks(kwargs, batch):
    """Dynamo + AOTAutograd (forward and backward graphs), no code generation: fast."""
    _compare_layer("aot_eager", kwargs, batch)


def test_encoder_traces_without_graph_breaks():
    _compare_encoder("aot_eager")


@pytest.mark.slow
def test_layer_and_encoder_compile_with_inductor():
    _compare_layer("inductor", {}, 2)
    _compare_encoder("inductor")


def test_bf16_autocast_keeps_softmax_in_float32_and_grads_flow():
    layer = CBSAAttention(32, num_heads=2, grid=(2, 2))
    x = (torch.randn(1, 64, 32) * 30).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, extraction = layer.attend(x, (8, 8))
    assert out.dtype == torch.bfloat16 and extraction.dtype == torch.bfloat16
    torch.testing.assert_close(extraction.float().sum(-1), torch.ones(1, 2, 4), atol=1e-2, rtol=0)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.step_x.grad).all()
