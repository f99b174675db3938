"""Plain ViT encoder with an injected attention type and timm's state-dict names."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from timm.layers import PatchEmbed, to_2tuple
from torch import nn

from cbsa_dense.layers.block import AttnLayer, Block
from cbsa_dense.layers.softmax_attention import SoftmaxAttention
from cbsa_dense.models.checkpoint import LoadReport, load_matching, read_state_dict
from cbsa_dense.models.encoders.base import TokenEncoder

log = logging.getLogger(__name__)

#: timm ViT keys that an encoder has no use for (classification head and pooling norm).
_HEAD_PREFIXES = ("head.", "fc_norm.", "head_drop.", "attn_pool.")


class ViTEncoder(TokenEncoder):
    """Vision Transformer encoder returning NCHW feature maps (see :mod:`.base` for the contract).

    Every block's attention is injected: one type for all blocks (``CBSAAttention`` or
    ``SoftmaxAttention``), optionally another type for chosen blocks (``alt_attn_layer`` at
    ``alt_attn_blocks``, e.g. softmax in the last block of a CBSA encoder). Any input size works: images are padded
    to a multiple of the patch size and position embeddings are resampled (bicubic) to the grid.

    Args:
        img_size: size the position embedding is made for (pretrained weights are resampled to it).
        patch_size: patch size (16; 14 for DINOv2) = output stride.
        in_chans: input channels.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        attn_layer: attention type of every block, called as ``attn_layer(dim, num_heads)``; ``None`` =
            :class:`~cbsa_dense.layers.SoftmaxAttention` (a class default would leak its init_args into
            a configured ``class_path`` under jsonargparse).
        alt_attn_layer: attention type of the blocks listed in ``alt_attn_blocks``.
        alt_attn_blocks: block indices (negative from the end) that use ``alt_attn_layer``.
        class_token: prepend a CLS token (dropped from the outputs).
        reg_tokens: number of register tokens (DINOv2-reg).
        no_embed_class: position embedding covers patches only (timm's flag; DINOv2-reg checkpoints).
        init_values: LayerScale init (DINOv2/DeiT-III: 1e-5 or 1.0); ``None`` = no LayerScale.
        drop_path_rate: stochastic depth, linearly increasing over blocks up to this value.
        out_indices: blocks whose outputs are returned (negative counts from the end).
        final_norm: apply the final LayerNorm to the last block's output when it is returned.
        norm_eps: LayerNorm epsilon (timm 1e-6; Segmenter checkpoints 1e-5).
        pretrained: timm ViT weights to load: a local ``.pth``/``.safetensors`` path, or a timm model
            name (``"vit_small_patch16_384.augreg_in21k_ft_in1k"``, needs network). Missing/unexpected
            keys are logged (e.g. CBSA step sizes, absent from softmax checkpoints).
        grad_checkpointing: activation checkpointing of every block during training.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
                 attn_layer: AttnLayer | None = None, alt_attn_layer: AttnLayer | None = None,
                 alt_attn_blocks: Sequence[int] = (), class_token: bool = True,
                 reg_tokens: int = 0, no_embed_class: bool = False, init_values: float | None = None,
                 drop_path_rate: float = 0.0, out_indices: Sequence[int] = (-1,), final_norm: bool = True,
                 norm_eps: float = 1e-6, pretrained: str | None = None, grad_checkpointing: bool = False) -> None:
        super().__init__()
        alt = {i if i >= 0 else depth + i for i in alt_attn_blocks}
        if alt and (alt_attn_layer is None or not alt <= set(range(depth))):
            raise ValueError(f"alt_attn_blocks={list(alt_attn_blocks)} needs alt_attn_layer and block indices "
                             f"in [-{depth}, {depth})")
        attn_layer = attn_layer or SoftmaxAttention
        attn_layers = [alt_attn_layer if i in alt else attn_layer for i in range(depth)]
        self.patch_embed = PatchEmbed(img_size=to_2tuple(img_size), patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, flatten=False, output_fmt="NHWC",
                                      strict_img_size=False, dynamic_img_pad=True)
        self._init_tokens(embed_dim, tuple(self.patch_embed.grid_size), patch_size, class_token, reg_tokens,
                          no_embed_class, out_indices, depth, final_norm, grad_checkpointing)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, attn_layer=layer, mlp_ratio=mlp_ratio, init_values=init_values,
                  drop_path=rate, norm_eps=norm_eps)
            for layer, rate in zip(attn_layers, rates))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.apply(_init_linear)
        for block in self.blocks:
            reset = getattr(block.attn, "reset_step_sizes", None)
            if reset is not None:
                reset()
        if pretrained:
            self.load_pretrained(pretrained)

    def load_pretrained(self, source: str) -> LoadReport:
        """Load timm ViT weights (file path or timm model name), adapted by :func:`adapt_timm_state_dict`."""
        if Path(source).exists():
            state_dict = read_state_dict(source)
        else:
            import timm

            try:
                state_dict = timm.create_model(source, pretrained=True).state_dict()
            except Exception as err:
                raise ValueError(f"pretrained={source!r} is neither an existing file nor a timm model name "
                                 f"whose weights could be fetched ({err})") from err
        return load_matching(self, adapt_timm_state_dict(state_dict, self), source=str(source))


def adapt_timm_state_dict(state_dict: dict, model: ViTEncoder) -> dict:
    """Adapt a timm (or DINOv2/DeiT/Segmenter-encoder) ViT state dict to ``model``.

    Pure function built on timm's ``checkpoint_filter_fn``: converts DINOv2 naming, resamples the
    position embedding to ``model``'s grid (and the patch kernel to its patch size), and drops
    classification-head keys. ``encoder.``-prefixed dicts (Segmenter) are unwrapped.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    if any(k.startswith("encoder.") for k in state_dict):
        state_dict = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
    adapted = checkpoint_filter_fn(dict(state_dict), model)
    return {k: v for k, v in adapted.items() if not k.startswith(_HEAD_PREFIXES)}


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
