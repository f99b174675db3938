import torch
from timm.models.vision_transformer import VisionTransformer

from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.encoders import CBTEncoder, ViTEncoder
from cbsa_dense.models.heads.linear_head import LinearHead
from cbsa_dense.models.segmentor import Segmentor
from cbsa_dense.models.weights import load_model_weights, model_state_dict_from


def _segmentor(num_classes=4, encoder=None):
    encoder = encoder or ViTEncoder(img_size=32, embed_dim=32, depth=2, num_heads=2,
                                    attn_layer=lambda d, h: CBSAAttention(d, h, variant="qkv", grid=(2, 2)))
    return Segmentor(encoder, LinearHead(in_channels=encoder.out_channels[-1], num_classes=num_classes))


def test_own_lightning_checkpoint_with_other_class_count(tmp_path):
    source, target = _segmentor(4), _segmentor(7)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "run.ckpt")
    report = load_model_weights(target, tmp_path / "run.ckpt")
    assert report.mismatched and all(k.startswith("head.") for k, _, _ in report.mismatched)
    assert not report.unexpected
    torch.testing.assert_close(target.encoder.blocks[1].attn.qkv.weight, source.encoder.blocks[1].attn.qkv.weight)


def test_timm_vit_weights_go_to_the_encoder(tmp_path):
    timm_vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    torch.save(timm_vit.state_dict(), tmp_path / "vit.pth")
    target = _segmentor()
    report = load_model_weights(target, tmp_path / "vit.pth")
    assert not report.unexpected and not report.mismatched
    assert set(report.missing) == {"encoder.blocks.0.attn.step_x", "encoder.blocks.0.attn.step_rep",
                                   "encoder.blocks.1.attn.step_x", "encoder.blocks.1.attn.step_rep",
                                   *[k for k in target.state_dict() if k.startswith("head.")]}
    torch.testing.assert_close(target.encoder.blocks[0].attn.qkv.weight, timm_vit.blocks[0].attn.qkv.weight)


def test_released_cbt_checkpoint_goes_to_the_encoder():
    cbt = CBTEncoder(embed_dim=32, depth=1, num_heads=2, head_dim=16)
    released = {"module.transformer.layers.0.1.fn.weight": cbt.blocks[0].ista.weight.detach().clone(),
                "module.pos_embedding": cbt.pos_embed.detach().clone()}
    mapped = model_state_dict_from(released, _segmentor(encoder=cbt))
    assert set(mapped) == {"encoder.blocks.0.ista.weight", "encoder.pos_embed"}
