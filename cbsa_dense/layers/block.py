"""Pre-norm transformer block with an injected attention layer (timm state-dict names)."""

from __future__ import annotations

import torch
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn

from cbsa_dense.layers.base import AttnLayer
from cbsa_dense.layers.softmax_attention import SoftmaxAttention


class Block(nn.Module):
    """``x = x + ls1(attn(norm1(x))); x = x + ls2(mlp(norm2(x)))`` with drop-path.

    Parameter names follow timm's ``VisionTransformer`` blocks (``norm1``, ``attn.qkv``, ``attn.proj``,
    ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``).

    Args:
        dim: token width.
        num_heads: attention heads.
        attn_layer: attention type, called as ``attn_layer(dim, num_heads)``; it must accept
            ``(x, grid, num_prefix_tokens)``; ``None`` = :class:`SoftmaxAttention`.
        mlp_ratio: MLP hidden width / dim.
        init_values: LayerScale init (``None`` = no LayerScale).
        drop_path: stochastic-depth probability.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, num_heads: int, attn_layer: AttnLayer | None = None, mlp_ratio: float = 4.0,
                 init_values: float | None = None, drop_path: float = 0.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = (attn_layer or SoftmaxAttention)(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
        """x (B, N, dim) -> (B, N, dim); ``grid`` and ``num_prefix_tokens`` go to the attention."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), grid, num_prefix_tokens)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
