"""ViTEncoder built from a timm architecture name; every shipped config names its architecture and the
weights of that architecture fit it exactly."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from jsonargparse import ArgumentParser

from cbsa_dense.cli import CBSADenseCLI
from cbsa_dense.cli.config_files import compose_config_args, load_config
from cbsa_dense.errors import ConfigError
from cbsa_dense.layers import CBSAAttention, SoftmaxAttention
from cbsa_dense.models.checkpoint import load_matching
from cbsa_dense.models.encoders import ViTEncoder, adapt_timm_state_dict
from cbsa_dense.models.encoders.vit import timm_vit_args
from tests.conftest import TASK_CONFIGS

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = TASK_CONFIGS

# name -> (img_size, patch, width, depth, heads, LayerScale init, registers, no_embed_class)
ARCHS = {
    "vit_small_patch16_224": (224, 16, 384, 12, 6, None, 0, False),
    "vit_base_patch16_384": (384, 16, 768, 12, 12, None, 0, False),
    "vit_tiny_patch16_384": (384, 16, 192, 12, 3, None, 0, False),
    "vit_small_patch14_dinov2": (518, 14, 384, 12, 6, 1e-5, 0, False),
    "vit_small_patch14_reg4_dinov2": (518, 14, 384, 12, 6, 1e-5, 4, True),
}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_arch_arguments_come_from_timm(arch):
    img, patch, width, depth, heads, init_values, regs, no_embed_class = ARCHS[arch]
    args = timm_vit_args(arch)
    assert args == {"img_size": img, "patch_size": patch, "embed_dim": width, "depth": depth, "num_heads": heads,
                    "mlp_ratio": 4.0, "class_token": True, "reg_tokens": regs, "no_embed_class": no_embed_class,
                    "init_values": init_values, "norm_eps": 1e-6}
    tags = timm.list_pretrained(f"{arch}.*")
    assert not tags or timm_vit_args(tags[0]) == args                  # a pretrained tag names the same arch


@pytest.mark.parametrize("arch", ["vit_small_patch14_reg4_dinov2", "vit_small_patch16_224"])
def test_encoder_by_name_reproduces_the_timm_model(arch):
    """Explicit arguments override the arch (depth 1 here); timm weights load with nothing left over and the
    features equal timm's, at an input size other than the position grid's."""
    torch.manual_seed(0)
    ref = timm.create_model(arch, pretrained=False, depth=1, img_size=56, dynamic_img_size=True).eval()
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if name.endswith("gamma"):
                param.normal_()                                    # make LayerScale matter
    enc = ViTEncoder(arch=arch, depth=1, img_size=56).eval()
    assert len(enc.blocks) == 1 and enc.patch_size == ARCHS[arch][1]
    report = load_matching(enc, adapt_timm_state_dict(ref.state_dict(), enc))
    assert not report.missing and not report.unexpected and not report.mismatched
    patch = ARCHS[arch][1]
    x = torch.randn(1, 3, 5 * patch, 3 * patch)
    with torch.no_grad():
        ours = enc(x)[0].flatten(2).transpose(1, 2)
        theirs = ref.forward_features(x)[:, ref.num_prefix_tokens:]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_pretrained_grid_is_resampled_to_img_size(tmp_path):
    """Weights saved at the arch's own grid (DINOv2: 37x37) load into a 224 encoder (16x16), resampled."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model("vit_small_patch14_dinov2", depth=1).state_dict().items()}
    assert shapes["pos_embed"] == (1, 1 + 37 * 37, 384)
    state = {k: torch.randn(s) * 0.02 for k, s in shapes.items()}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    enc = ViTEncoder(arch="vit_small_patch14_dinov2", depth=1, img_size=224,
                     attn_layer=partial(CBSAAttention, grid=(4, 4), variant="qkv"),
                     pretrained=str(tmp_path / "w.safetensors"))
    assert enc.pos_embed.shape == (1, 1 + 16 * 16, 384)
    torch.testing.assert_close(enc.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    assert enc(torch.randn(1, 3, 224, 224))[0].shape == (1, 384, 16, 16)


def test_bad_arch_names_are_config_errors_with_close_matches():
    with pytest.raises(ConfigError, match=r"arch='vit_smal_patch16_224' is not a timm model name.*vit_small_patch16_224"):
        ViTEncoder(arch="vit_smal_patch16_224")
    with pytest.raises(ConfigError, match=r"no pretrained tag 'nope'.*augreg"):
        ViTEncoder(arch="vit_small_patch16_224.nope")
    with pytest.raises(ConfigError, match=r"arch='resnet50' is not a plain timm ViT.*ResNet"):
        ViTEncoder(arch="resnet50")
    with pytest.raises(ConfigError, match=r"arch='vit_base_patch16_clip_224'.*pre-norm"):
        ViTEncoder(arch="vit_base_patch16_clip_224")


# ----------------------------------------------------------------------------------------- shipped configs
class _ParseOnly(CBSADenseCLI):
    """The project's CLI parser, without instantiating anything."""

    def instantiate_classes(self) -> None:
        pass


def _encoder_key(config: dict) -> str:
    return "model.init_args.encoder"


def _shipped(path: Path) -> dict:
    return load_config(path)                      # composed: its _base_ files merged in


def _encoder_config(config: dict) -> dict:
    return config["model"]["init_args"]["encoder"]


PRETRAINED_CONFIGS = [p for p in CONFIGS if "pretrained" in _encoder_config(_shipped(p)).get("init_args", {})]


def test_the_pretrained_configs_are_the_expected_ones():
    names = {str(p.relative_to(ROOT / "configs")) for p in PRETRAINED_CONFIGS}
    assert {"seg_ade20k.yaml", "seg_custom.yaml", "det_coco.yaml", "det_custom.yaml", "finetune_cpu.yaml",
            "paper/ade20k_cbt_small.yaml"} <= names


@pytest.mark.parametrize("config", PRETRAINED_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_encoder_takes_its_arch_weights_exactly(config):
    """Through the CLI's parser: the encoder names a timm arch, loads a random-initialized timm model of
    that arch with no unexpected or shape-mismatched tensor, and CBSA encoders use the ``qkv`` variant
    (the only one timm's qkv/proj fit). Built on the meta device: nothing large is allocated."""
    shipped = _encoder_config(_shipped(config))["init_args"]
    arch = shipped.get("arch")
    assert arch, f"{config.name}: the encoder takes pretrained weights but names no arch"
    key = _encoder_key(_shipped(config))
    cli = _ParseOnly(args=compose_config_args(["--config", str(config), f"--{key}.init_args.img_size", "56"]),
                     run=False)
    parsed = cli.config
    for part in key.split("."):
        parsed = parsed[part]
    parser = ArgumentParser()
    parser.add_argument("--encoder", type=ViTEncoder)
    namespace = parser.parse_object({"encoder": parsed.as_dict()})
    with torch.device("meta"):
        encoder = parser.instantiate_classes(namespace).encoder
        reference = timm.create_model(arch, pretrained=False)
    attn = encoder.blocks[0].attn
    assert isinstance(attn, (SoftmaxAttention, CBSAAttention))
    if isinstance(attn, CBSAAttention):
        assert attn.variant == "qkv", f"{config.name}: CBSA must use variant qkv to load softmax-ViT weights"
    assert len(encoder.blocks) == len(reference.blocks) and encoder.embed_dim == reference.embed_dim
    try:
        report = load_matching(encoder, adapt_timm_state_dict(reference.state_dict(), encoder))
    except Exception as err:  # a strict loader raises on unexpected / mismatched tensors
        pytest.fail(f"{config.name}: {arch} weights do not fit: {err}")
    assert not report.unexpected and not report.mismatched, report.summary()
    fresh = ("attn.step_x", "attn.step_rep", "attn.local.weight", "attn.local.bias")   # CBSA's own parameters
    assert all(k.endswith(fresh) for k in report.missing), report.missing
