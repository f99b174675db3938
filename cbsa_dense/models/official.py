"""Import of the paper authors' released checkpoints: segmentation (Segmenter format) and CBT (ImageNet).

A release is ``checkpoint.pth`` (``{"model": state_dict, ...}``) with ``variant.yml`` beside it
(``net_kwargs``: backbone, d_model, n_heads, n_layers, patch_size, image_size, normalization,
decoder, n_cls). The encoder is a timm-named softmax ViT (LayerNorm eps 1e-5); the decoder a CBT
decoder whose layers are ``decoder.net.layers.{j}.{norm, fn.proj, fn.step_x, fn.step_rep, fn.to_out}``.
:func:`convert_segmenter_state_dict` renames those keys to :class:`~cbsa_dense.models.segmentor.Segmentor`'s
(a pure function); :func:`load_official_checkpoint` builds the matching model and wraps it so that it
takes images in [0, 1] and reproduces the authors' forward (normalization, padding to the patch size,
bilinear position-embedding resize, bilinear mask upsampling, unpadding).
:func:`load_cbt_checkpoint` builds a released CBT classifier (``*.pth.tar``) as a :class:`CBTEncoder`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from cbsa_dense.errors import CheckpointError
from cbsa_dense.layers.cbsa_attention import CBSAAttention
from cbsa_dense.layers.softmax_attention import SoftmaxAttention
from cbsa_dense.models.encoders.cbt import CBTEncoder, convert_cbt_checkpoint
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


class VariantLoader(yaml.SafeLoader):
    """YAML's safe loader plus ``!!python/tuple`` (the authors write ``variant.yml`` with ``yaml.dump``, so
    tuples such as ``image_size`` carry that tag); every other ``python/*`` tag is still refused."""


def _construct_tuple(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> tuple:
    return tuple(loader.construct_sequence(node, deep=True))


VariantLoader.add_constructor("tag:yaml.org,2002:python/tuple", _construct_tuple)


def read_variant(path: str | Path) -> dict:
    """Read a release's ``variant.yml`` (:class:`VariantLoader`); returns its ``net_kwargs``.

    Raises:
        CheckpointError: the file is missing, is not YAML, uses a Python tag other than ``python/tuple``, or
            lacks a required ``net_kwargs`` entry (names the file and the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a Segmenter checkpoint needs its variant.yml beside it (copy "
                              f"it from the release)")
    try:
        variant = yaml.load(path.read_text(), Loader=VariantLoader) or {}
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CheckpointError(f"cannot read {path}{where}: {' '.join(str(problem).split())} (only plain YAML "
                              f"and !!python/tuple are accepted)") from err
    if not isinstance(variant, dict):
        raise CheckpointError(f"{path} holds a {type(variant).__name__}, not a mapping with net_kwargs")
    net_kwargs = variant.get("net_kwargs", variant)
    if not isinstance(net_kwargs, dict):
        raise CheckpointError(f"{path}: net_kwargs is a {type(net_kwargs).__name__}, not a mapping")
    missing = [k for k in ("d_model", "n_heads", "patch_size", "n_cls") if k not in net_kwargs]
    if missing:
        raise CheckpointError(f"{path}: net_kwargs lacks {missing} (a release's variant.yml has them)")
    return net_kwargs


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
        CheckpointError: a decoder key this converter does not know (names it).
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
                raise CheckpointError(f"unknown decoder layer key {key!r} in the Segmenter checkpoint")
        elif key in ("decoder.cls_emb",) or key.startswith(("decoder.decoder_norm.", "decoder.mask_norm.")):
            out["head." + key[len("decoder."):]] = value
        else:
            raise CheckpointError(f"unknown key {key!r} in the Segmenter checkpoint (expected encoder.* or the "
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
    return Segmentor(*variant_parts(net_kwargs, state_dict))


def variant_parts(net_kwargs: dict, state_dict: dict[str, torch.Tensor]) -> tuple[nn.Module, Callable, int]:
    """``(encoder, head factory, num_classes)`` of a release: what a ``Segmentor`` or a
    ``SegmentationTask`` is assembled from (shapes not in ``variant.yml`` are read from the weights)."""
    d = int(net_kwargs["d_model"])
    if "encoder.dist_token" in state_dict:
        raise CheckpointError("distilled (DeiT) encoders are not supported: the checkpoint has encoder.dist_token")
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

    head = partial(CBTDecoder, n_layers=n_layers, num_heads=heads, attn_layer=attn_layer, norm_eps=1e-5)
    return encoder, head, int(net_kwargs["n_cls"])


def load_official_checkpoint(path: str | Path) -> OfficialSegmenter:
    """Load the authors' ``checkpoint.pth`` (with ``variant.yml`` beside it) as an eval-mode module.

    The module maps float images in [0, 1], (B, 3, H, W), to logits (B, n_cls, H, W); normalization,
    padding to the patch size and unpadding happen inside. The file is read with ``weights_only=True``,
    ``variant.yml`` with :class:`VariantLoader`.

    Raises:
        CheckpointError: the checkpoint or its ``variant.yml`` is missing or unreadable, unknown keys, or
            weights that do not fit the variant (names them). A missing checkpoint file is also a
            ``FileNotFoundError``.
    """
    from cbsa_dense.models.checkpoint import read_state_dict

    path = Path(path)
    state_dict = read_state_dict(path)
    net_kwargs = read_variant(path.parent / "variant.yml")
    if not is_segmenter_state_dict(state_dict):
        raise CheckpointError(f"{path} is not a Segmenter checkpoint with the CBT decoder (no decoder.cls_emb / "
                              f"decoder.net.layers.*)")
    model = build_from_variant(net_kwargs, state_dict)
    converted = convert_segmenter_state_dict(state_dict)
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path} does not fit its variant.yml: missing {result.missing_keys[:5]}, unexpected "
                              f"{result.unexpected_keys[:5]}")
    mean, std = NORMALIZATION.get(str(net_kwargs.get("normalization", "vit")), NORMALIZATION["vit"])
    return OfficialSegmenter(model, mean, std).eval()


def cbt_args_from_state_dict(state_dict: dict[str, torch.Tensor], source: str = "the checkpoint") -> dict:
    """:class:`CBTEncoder` arguments of a released CBT state dict (``module.`` prefix allowed)."""
    sd = convert_cbt_checkpoint(state_dict)
    try:
        pos, qkv, step = sd["pos_embed"], sd["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.step_x"]
    except KeyError as err:
        raise CheckpointError(f"{source} is not a released CBT checkpoint: no {err.args[0]} after conversion "
                              f"(expected transformer.layers.*, pos_embedding, to_patch_embedding.proj.*)") from None
    side = round((pos.shape[1] - 1) ** 0.5)
    if side * side != pos.shape[1] - 1:
        raise CheckpointError(f"{source}: pos_embedding {tuple(pos.shape)} is not CLS + a square grid")
    heads = int(step.shape[0])
    return {"img_size": 16 * side, "embed_dim": int(pos.shape[2]),
            "depth": len({k.split(".")[1] for k in sd if k.startswith("blocks.")}), "num_heads": heads,
            "head_dim": int(qkv.shape[0]) // heads,
            "num_classes": int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0}


def load_cbt_checkpoint(path: str | Path, **overrides) -> CBTEncoder:
    """Load an authors' released CBT classification checkpoint (``*.pth.tar``) as an eval-mode
    :class:`CBTEncoder` that reproduces the release: ``encoder.classify(images)`` gives its ImageNet
    logits (images normalized as for the release); ``encoder(images)`` gives feature maps.

    Sizes are read from the weights; the released code's shifted representative grid
    (``legacy_shifted_grid=True``) and 8x8 representatives are set. ``overrides`` go to :class:`CBTEncoder`
    (e.g. ``out_indices``). Every tensor must load: no missing, unexpected or mismatched key.

    Raises:
        CheckpointError: the file is unreadable or not a CBT release, or a tensor does not fit (names it).
    """
    from cbsa_dense.models.checkpoint import load_matching, read_state_dict

    state_dict = read_state_dict(path)
    args = {**cbt_args_from_state_dict(state_dict, str(path)), "legacy_shifted_grid": True, **overrides}
    encoder = CBTEncoder(**args)
    load_matching(encoder, convert_cbt_checkpoint(state_dict), source=str(path), strict=True)
    return encoder.eval()
