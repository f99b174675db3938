"""The paper's CBT decoder: a Segmenter mask transformer whose layers are CBSA attention layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from cbsa_dense.layers.base import AttnLayer
from cbsa_dense.layers.block import Block
from cbsa_dense.layers.cbsa_attention import CBSAAttention
from cbsa_dense.models.heads.seg_head_base import SegHead


class AttentionLayer(nn.Module):
    """``x = x + attn(norm(x))`` (no MLP): a CBT decoder layer. Names match the released checkpoints
    (``norm``; ``attn`` holds what the release calls ``fn``)."""

    def __init__(self, dim: int, num_heads: int, attn_layer: AttnLayer, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attn_layer(dim, num_heads)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
        return x + self.attn(self.norm(x), grid, num_prefix_tokens)


class CBTDecoder(SegHead):
    """Mask-transformer decoder (Segmenter), with CBSA layers as in the paper's "CBT decoder".

    ``num_classes`` learnable class embeddings are appended AFTER the patch tokens; ``n_layers`` layers
    run over the joint sequence (the patch grid is passed to the attention, the class embeddings are
    suffix tokens); a final LayerNorm; patch and class tokens are L2-normalized; the masks are their
    dot products, LayerNorm-ed over the class axis.

    The paper's decoder: ``attn_layer = CBSAAttention(grid=(10, 10), head_dim=100)``, ``num_heads=3``,
    attention-only layers (``mlp_ratio=None``), no projections. Segmenter's baseline: ``attn_layer =
    SoftmaxAttention``, ``mlp_ratio=4``, ``proj_out=True`` (and ``embed_dim`` for its ``proj_dec``).

    Args:
        in_channels: channels of every encoder output (built by the Segmentor from the encoder).
        num_classes: number of classes (= class embeddings).
        n_layers: decoder layers.
        num_heads: attention heads per layer.
        attn_layer: attention type, ``attn_layer(dim, num_heads)``; ``None`` = the paper's CBSA
            (head_dim 100, 10x10 representatives).
        embed_dim: decoder width; ``None`` = the input width (the paper's CBT decoder, no ``proj_dec``),
            otherwise a ``proj_dec`` Linear maps the encoder tokens to it.
        mlp_ratio: ``None`` = attention-only layers (CBT); a number = full transformer blocks with that MLP
            ratio (Segmenter).
        proj_out: Segmenter's ``proj_patch`` / ``proj_classes`` matrices before the normalization.
        drop_path_rate: stochastic depth of the transformer blocks (``mlp_ratio`` set only).
        norm_eps: LayerNorm epsilon (1e-5: the released checkpoints).
        in_index: which encoder output to decode.

    Shapes: features[in_index] (B, in_channels, h, w) -> logits (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int, n_layers: int = 3, num_heads: int = 3,
                 attn_layer: AttnLayer | None = None, embed_dim: int | None = None,
                 mlp_ratio: float | None = None, proj_out: bool = False, drop_path_rate: float = 0.0,
                 norm_eps: float = 1e-5, in_index: int = -1) -> None:
        super().__init__()
        self._set_inputs(in_channels, in_index, num_classes)
        if attn_layer is None:
            def attn_layer(dim: int, heads: int) -> nn.Module:
                return CBSAAttention(dim, heads, head_dim=100, grid=(10, 10))
        in_dim = self.in_channels[0]
        dim = embed_dim or in_dim
        self.embed_dim = dim
        self.proj_dec = nn.Linear(in_dim, dim) if embed_dim is not None else None
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, dim))
        if mlp_ratio is None:
            self.layers = nn.ModuleList(AttentionLayer(dim, num_heads, attn_layer, norm_eps) for _ in range(n_layers))
        else:
            rates = [drop_path_rate * i / max(n_layers - 1, 1) for i in range(n_layers)]
            self.layers = nn.ModuleList(Block(dim, num_heads, attn_layer=attn_layer, mlp_ratio=mlp_ratio,
                                              drop_path=rate, norm_eps=norm_eps) for rate in rates)
        self.decoder_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.proj_patch = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim)) if proj_out else None
        self.proj_classes = nn.Parameter(dim ** -0.5 * torch.randn(dim, dim)) if proj_out else None
        self.mask_norm = nn.LayerNorm(num_classes, eps=norm_eps)
        self.apply(_init_weights)
        trunc_normal_(self.cls_emb, std=0.02)
        for module in self.modules():
            if module is not self and hasattr(module, "reset_step_sizes"):
                module.reset_step_sizes()

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """features: encoder maps; features[in_index] (B, C, h, w) -> logits (B, num_classes, h, w)."""
        x = features[self.in_index[0]]
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)                                   # (B, h*w, C)
        if self.proj_dec is not None:
            x = self.proj_dec(x)
        x = torch.cat([x, self.cls_emb.expand(b, -1, -1)], dim=1)          # classes appended after patches
        for layer in self.layers:
            x = layer(x, (h, w), 0)
        x = self.decoder_norm(x)
        patches, classes = x[:, :h * w], x[:, h * w:]
        if self.proj_patch is not None:
            patches, classes = patches @ self.proj_patch, classes @ self.proj_classes
        patches = F.normalize(patches, dim=-1)
        classes = F.normalize(classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))           # (B, h*w, num_classes)
        return masks.transpose(1, 2).reshape(b, self.num_classes, h, w)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
