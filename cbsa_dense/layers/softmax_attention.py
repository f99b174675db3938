"""Multi-head softmax self-attention through ``scaled_dot_product_attention`` (the baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cbsa_dense.layers.base import TokenMixer
from cbsa_dense.layers.tokens import check_layout, resolve_head_dim


class SoftmaxAttention(TokenMixer):
    """Standard MHSA with timm's parameter names (``qkv``, ``proj``), so timm ViT weights load as is.

    Cost: ``4*N*d*D + 2*N^2*D`` MACs; SDPA picks a fused (flash / memory-efficient) kernel.

    Args:
        dim: token width d.
        num_heads: heads h.
        head_dim: width per head p (default ``dim // num_heads``); inner width D = h * p.
        qkv_bias: bias of the ``qkv`` projection.
        proj_bias: bias of the output projection.
        attn_drop: dropout on attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, qkv_bias: bool = True,
                 proj_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = resolve_head_dim(dim, num_heads, head_dim)
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                num_prefix_tokens: int = 0) -> torch.Tensor:
        """Attend over all N tokens.

        Args:
            x: tokens (B, N, dim).
            grid: patch grid (H, W); only validated here (softmax attention ignores the layout).
            num_prefix_tokens: prefix tokens before the patches; only validated.

        Returns:
            (B, N, dim).
        """
        b, n, _ = x.shape
        if grid is not None:
            check_layout(n, grid, num_prefix_tokens)
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, -1)))
