"""Import of the paper authors' released segmentation checkpoints (Segmenter format).

A release is ``checkpoint.pth`` (``{"model": state_dict, ...}``) with ``variant.yml`` beside it
(``net_kwargs``: backbone, d_model, n_heads, n_layers, patch_size, image_size, normalization,
decoder, n_cls). The encoder is a timm-named softmax ViT (LayerNorm eps 1e-5); the decoder a CBT
decoder whose layers are ``decoder.net.layers.{j}.{norm, fn.proj, fn.step_x, fn.step_rep, fn.to_out}``.
:func:`convert_segmenter_state_dict` renames those keys to :class:`~cbsa_dense.models.segmentor.Segmentor`'s
(a pure function); :func:`load_official_checkpoint` builds the matching model and wraps it so that it
takes images in [0, 1] and reproduces the authors' forward (normalization, padding to the patch size,
bilinear position-embedding resize, bilinear mask upsampling, unpadding).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from cbsa_dense.layers.cbsa_attention import CBSAAttention
from cbsa_dense.layers.softmax_attention import SoftmaxAttention
from cbsa_dense.models.encoders.vit import ViTEncoder
from cbsa_dense.models.heads.cbt_decoder import CBTDecoder
from cbsa_dense.models.segmentor import Segmentor

#: Segmenter's normalization statistics by ``net_kwargs.normalization``.
NORMALIZATION = {"vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                 "deit": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                 "default": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}

#: The released decoder's hard-coded representative grid (m = 100).
RELEASED_GRID = (10, 10)

_LAYER_RE = re.compile(r"^decoder\.net\.layers\.(\d+)\.(norm|fn)\.(.+)$")
_FN_NAMES = {"proj.weight": "attn.qkv.weight", "to_out.weight": "attn.proj.weight", "to_out.bias": "attn.proj.bias",
             "step_x": "attn.step_x", "step_rep": "attn.step_rep"}


def is_segmenter_state_dict(state_dict: dict) -> bool:
    """True for a Segmenter-format state dict with the released CBT decoder."""
    return "decoder.cls_emb" in state_dict and any(k.startswith("decoder.net.layers.") for k in state_dict)


def convert_segmenter_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a released Segmenter/CBT-decoder state dict to :class:`Segmentor` keys (pure function).

    ``encoder.*`` keeps timm's names (the unused classification ``encoder.head.*`` is dropped);
    ``decoder.cls_emb`` / ``decoder_norm`` / ``mask_norm`` -> ``head.*``; decoder layer ``j``'s
    ``norm`` -> ``head.layers.j.norm``, ``fn.proj`` -> ``head.layers.j.attn.qkv``, ``fn.to_out`` ->
    ``head.layers.j.attn.proj``, ``fn.step_{x,rep}`` -> ``head.layers.j.attn.step_{x,rep}``.

    Raises:
        ValueError: a decoder key this converter does not know (names it).
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("encoder."):
            if not key.startswith("encoder.head."):
                out[key] = value
            continue
        match = _LAYER_RE.match(key)
        if match:
            j, part, rest = match.groups()
            if part == "norm":
                out[f"head.layers.{j}.norm.{rest}"] = value
            elif rest in _FN_NAMES:
                out[f"head.layers.{j}.{_FN_NAMES[rest]}"] = value
            else:
                raise ValueError(f"unknown decoder layer key {key!r} in the Segmenter checkpoint")
        elif key in ("decoder.cls_emb",) or key.startswith(("decoder.decoder_norm.", "decoder.mask_norm.")):
            out["head." + key[len("decoder."):]] = value
        else:
            raise ValueError(f"unknown key {key!r} in the Segmenter checkpoint (expected encoder.* or the "
                             f"CBT decoder's decoder.* keys)")
    return out


class SegmenterViTEncoder(ViTEncoder):
    """:class:`ViTEncoder` resizing its position embedding as Segmenter does (bilinear, no antialias)."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        pos = self.pos_embed
        gh, gw = self.patch_embed.grid_size
        prefix = self.num_prefix_tokens
        if (h, w) != (gh, gw):
            grid = pos[:, prefix:].reshape(1, gh, gw, c).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            pos = torch.cat([pos[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, h * w, c)], dim=1)
        tokens = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        return torch.cat([*tokens, x.reshape(b, h * w, c)], dim=1) + pos


class OfficialSegmenter(nn.Module):
    """A released checkpoint as a module: images in [0, 1] (B, 3, H, W) -> logits (B, n_cls, H, W).

    Args:
        segmentor: the converted model (normalized images in, logits out; pads internally).
        mean: normalization mean of the release.
        std: normalization std of the release.
    """

    def __init__(self, segmentor: Segmentor, mean: tuple[float, float, float],
                 std: tuple[float, float, float]) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.num_classes = segmentor.num_classes
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmentor((images - self.mean) / self.std)


def build_from_variant(net_kwargs: dict, state_dict: dict[str, torch.Tensor]) -> Segmentor:
    """The :class:`Segmentor` of a release (shapes not in ``variant.yml`` are read from the weights)."""
    d = int(net_kwargs["d_model"])
    if "encoder.dist_token" in state_dict:
        raise ValueError("distilled (DeiT) encoders are not supported: the checkpoint has encoder.dist_token")
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.blocks.")})
    mlp_hidden = state_dict["encoder.blocks.0.mlp.fc1.weight"].shape[0]
    image_size = net_kwargs.get("image_size", 224)
    encoder = SegmenterViTEncoder(
        img_size=tuple(image_size) if isinstance(image_size, (list, tuple)) else int(image_size),
        patch_size=int(net_kwargs["patch_size"]), embed_dim=d, depth=depth, num_heads=int(net_kwargs["n_heads"]),
        mlp_ratio=mlp_hidden / d, attn_layer=SoftmaxAttention, norm_eps=1e-5)
    n_layers = len({k.split(".")[3] for k in state_dict if k.startswith("decoder.net.layers.")})
    heads = int(state_dict["decoder.net.layers.0.fn.step_x"].shape[0])
    inner = state_dict["decoder.net.layers.0.fn.proj.weight"].shape[0]

    def attn_layer(dim: int, num_heads: int) -> nn.Module:
        return CBSAAttention(dim, num_heads, head_dim=inner // num_heads, grid=RELEASED_GRID, qkv_bias=False)

    head = CBTDecoder(d, int(net_kwargs["n_cls"]), n_layers=n_layers, num_heads=heads, attn_layer=attn_layer,
                      norm_eps=1e-5)
    return Segmentor(encoder, head)


def load_official_checkpoint(path: str | Path) -> OfficialSegmenter:
    """Load the authors' ``checkpoint.pth`` (with ``variant.yml`` beside it) as an eval-mode module.

    The module maps float images in [0, 1], (B, 3, H, W), to logits (B, n_cls, H, W); normalization,
    padding to the patch size and unpadding happen inside. The file is read with ``weights_only=True``.

    Raises:
        FileNotFoundError: the checkpoint or its ``variant.yml`` is missing.
        ValueError: unknown keys, or weights that do not fit the variant (names them).
    """
    from cbsa_dense.models.checkpoint import read_state_dict

    path = Path(path)
    variant_path = path.parent / "variant.yml"
    if not variant_path.is_file():
        raise FileNotFoundError(f"{variant_path} not found: a Segmenter checkpoint needs its variant.yml beside it")
    variant = yaml.safe_load(variant_path.read_text()) or {}
    net_kwargs = variant.get("net_kwargs", variant)
    missing = [k for k in ("d_model", "n_heads", "patch_size", "n_cls") if k not in net_kwargs]
    if missing:
        raise ValueError(f"{variant_path}: net_kwargs lacks {missing}")
    state_dict = read_state_dict(path)
    if not is_segmenter_state_dict(state_dict):
        raise ValueError(f"{path} is not a Segmenter checkpoint with the CBT decoder (no decoder.net.layers.*)")
    model = build_from_variant(net_kwargs, state_dict)
    converted = convert_segmenter_state_dict(state_dict)
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path} does not fit its variant: missing {result.missing_keys[:10]}, unexpected "
                         f"{result.unexpected_keys[:10]}")
    mean, std = NORMALIZATION.get(str(net_kwargs.get("normalization", "vit")), NORMALIZATION["vit"])
    return OfficialSegmenter(model, mean, std).eval()
