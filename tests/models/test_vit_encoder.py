import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from cbsa_dense.layers import CBSAAttention, SoftmaxAttention
from cbsa_dense.models.checkpoint import load_matching, read_state_dict
from cbsa_dense.models.encoders import ViTEncoder, adapt_timm_state_dict

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2}


def _timm(**kwargs):
    return VisionTransformer(num_classes=10, dynamic_img_size=True, **{**TINY, **kwargs}).eval()


def _timm_patch_features(model, x):
    return model.forward_features(x)[:, model.num_prefix_tokens:]


def _ours_as_tokens(encoder, x):
    return encoder(x)[0].flatten(2).transpose(1, 2)


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_softmax_vit_loaded_from_timm_reproduces_timm_features(size):
    ref = _timm(img_size=64, patch_size=16)
    enc = ViTEncoder(img_size=64, patch_size=16, **TINY).eval()
    report = load_matching(enc, adapt_timm_state_dict(ref.state_dict(), enc))
    assert not report.missing and not report.unexpected and not report.mismatched
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(_ours_as_tokens(enc, x), _timm_patch_features(ref, x), atol=1e-5, rtol=1e-5)


def test_dinov2_style_registers_layerscale_patch14():
    kwargs = {"patch_size": 14, "reg_tokens": 4, "no_embed_class": True, "init_values": 1e-5}
    ref = _timm(img_size=56, **kwargs)
    with torch.no_grad():
        for blk in ref.blocks:
            blk.ls1.gamma.normal_()
    enc = ViTEncoder(img_size=56, **TINY, **kwargs).eval()
    report = load_matching(enc, adapt_timm_state_dict(ref.state_dict(), enc))
    assert not report.missing and not report.mismatched
    x = torch.randn(1, 3, 70, 42)
    with torch.no_grad():
        torch.testing.assert_close(_ours_as_tokens(enc, x), _timm_patch_features(ref, x), atol=1e-5, rtol=1e-5)


def test_raw_dinov2_checkpoint_names_are_converted():
    enc = ViTEncoder(img_size=28, patch_size=14, reg_tokens=4, no_embed_class=True, init_values=1.0, **TINY)
    raw = {k: v.clone() for k, v in enc.state_dict().items()}
    # DINOv2's own layout: registers named register_tokens, pos_embed includes the CLS slot, mask_token.
    raw["register_tokens"] = raw.pop("reg_token")
    raw["pos_embed"] = torch.cat([torch.zeros(1, 1, 64), raw["pos_embed"]], dim=1)
    raw["mask_token"] = torch.zeros(1, 64)
    report = load_matching(enc, adapt_timm_state_dict(raw, enc))
    assert not report.missing and not report.unexpected and not report.mismatched


def test_pos_embed_resampled_to_new_img_size():
    ref = _timm(img_size=64, patch_size=16)
    enc = ViTEncoder(img_size=96, patch_size=16, **TINY)
    adapted = adapt_timm_state_dict(ref.state_dict(), enc)
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=(6, 6), old_size=(4, 4), num_prefix_tokens=1)
    assert adapted["pos_embed"].shape == (1, 37, 64)
    torch.testing.assert_close(adapted["pos_embed"], expected)


def test_pretrained_from_file_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    ref = _timm(img_size=64)
    torch.save({"model": ref.state_dict()}, tmp_path / "w.pth")
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    expected = _timm_patch_features(ref, x).detach()
    for name in ("w.pth", "w.safetensors"):
        enc = ViTEncoder(img_size=64, pretrained=str(tmp_path / name), **TINY).eval()
        torch.testing.assert_close(_ours_as_tokens(enc, x).detach(), expected, atol=1e-5, rtol=1e-5)


def test_bad_weights_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        read_state_dict(bad)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")


def test_cbsa_qkv_variant_reuses_timm_weights():
    ref = _timm(img_size=64)
    enc = ViTEncoder(img_size=64, attn_layer=lambda d, h: CBSAAttention(d, h, variant="qkv", grid=(2, 2)), **TINY)
    report = load_matching(enc, adapt_timm_state_dict(ref.state_dict(), enc))
    assert sorted(report.missing) == sorted(f"blocks.{i}.attn.{s}" for i in range(2) for s in ("step_x", "step_rep"))
    assert not report.mismatched


def test_state_dict_round_trip_and_multilevel_outputs():
    enc = ViTEncoder(img_size=64, attn_layer=CBSAAttention, out_indices=(0, 1), **TINY).eval()
    clone = ViTEncoder(img_size=64, attn_layer=CBSAAttention, out_indices=(0, 1), **TINY).eval()
    clone.load_state_dict(enc.state_dict(), strict=True)
    x = torch.randn(2, 3, 50, 70)                                  # odd, non-square: padded to 64 x 80
    outs = enc(x)
    assert [o.shape for o in outs] == [(2, 64, 4, 5)] * 2
    assert enc.out_channels == [64, 64] and enc.out_strides == [16, 16]
    for a, b in zip(outs, clone(x)):
        torch.testing.assert_close(a, b)


def test_per_block_attention_choice():
    enc = ViTEncoder(attn_layer=CBSAAttention, alt_attn_layer=SoftmaxAttention, alt_attn_blocks=[-1], **TINY)
    assert [type(b.attn) for b in enc.blocks] == [CBSAAttention, SoftmaxAttention]
    with pytest.raises(ValueError, match="alt_attn_blocks"):
        ViTEncoder(alt_attn_blocks=[5], alt_attn_layer=SoftmaxAttention, **TINY)


def test_grad_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = ViTEncoder(img_size=32, attn_layer=CBSAAttention, **TINY)
    b = ViTEncoder(img_size=32, attn_layer=CBSAAttention, grad_checkpointing=True, **TINY)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 48)
    for m in (a, b):
        m.train()
        m(x)[0].square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_drop_path_is_stochastic_in_training_only():
    enc = ViTEncoder(img_size=32, drop_path_rate=0.5, **TINY)
    x = torch.randn(4, 3, 32, 32)
    enc.train()
    assert not torch.allclose(enc(x)[0], enc(x)[0])
    enc.eval()
    torch.testing.assert_close(enc(x)[0], enc(x)[0])


def test_bad_out_indices():
    with pytest.raises(ValueError, match="out_indices"):
        ViTEncoder(out_indices=(3,), **TINY)


def test_set_input_size_equals_on_the_fly_resampling():
    enc = ViTEncoder(img_size=64, attn_layer=CBSAAttention, **TINY).eval()
    x = torch.randn(1, 3, 48, 96)
    expected = enc(x)[0]
    enc.set_input_size((48, 96))
    assert enc.pos_embed.shape == (1, 1 + 3 * 6, 64) and tuple(enc.patch_embed.grid_size) == (3, 6)
    torch.testing.assert_close(enc(x)[0], expected)


def test_qkv_variant_starts_with_small_positive_step_sizes_and_keeps_the_released_init_as_an_option():
    """Adapting a pretrained softmax ViT (variant qkv): step sizes start at QKV_STEP_INIT on every block,
    not N(0, 1) (whose random signs flip each head's attention output, docs/finetuning.md);
    ``step_init="normal"`` is the released init, and the shared variant keeps it by default."""
    from functools import partial

    from cbsa_dense.layers.cbsa_attention import QKV_STEP_INIT

    torch.manual_seed(0)
    enc = ViTEncoder(img_size=32, patch_size=16, depth=2, embed_dim=64, num_heads=16,
                     attn_layer=partial(CBSAAttention, grid=(1, 1), variant="qkv"))
    for block in enc.blocks:
        assert torch.all(block.attn.step_x == QKV_STEP_INIT[0]) and torch.all(block.attn.step_rep == QKV_STEP_INIT[1])
    assert QKV_STEP_INIT[0] > 0 and QKV_STEP_INIT[1] > 0
    released = CBSAAttention(64, 16, variant="qkv", step_init="normal")
    assert (released.step_x < 0).any() and (released.step_x > 0).any()
    shared = CBSAAttention(64, 16)
    assert (shared.step_x < 0).any() and (shared.step_x > 0).any()
    pair = CBSAAttention(64, 16, variant="qkv", step_init=(0.25, 2.0))
    assert torch.all(pair.step_x == 0.25) and torch.all(pair.step_rep == 2.0)
    with pytest.raises(ValueError, match="step_init"):
        CBSAAttention(64, 16, step_init="uniform")
