"""Kernelized linear attention (Katharopoulos et al. 2020), a linear-cost baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cbsa_dense.layers.base import TokenMixer
from cbsa_dense.layers.tokens import check_layout, resolve_head_dim


class LinearAttention(TokenMixer):
    """Linear attention with feature map ``elu(x) + 1``: ``phi(q) (phi(k)^T v) / (phi(q) sum phi(k))``.

    Same parameter names and call contract as :class:`~cbsa_dense.layers.SoftmaxAttention`.
    Cost: ``4*N*d*D + 2*N*D*p`` MACs.

    Args:
        dim: token width d.
        num_heads: heads h.
        head_dim: width per head p (default ``dim // num_heads``).
        qkv_bias: bias of the ``qkv`` projection.
        proj_bias: bias of the output projection.
        proj_drop: dropout after the output projection.
        eps: denominator stabilizer.
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, qkv_bias: bool = True,
                 proj_bias: bool = True, proj_drop: float = 0.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = resolve_head_dim(dim, num_heads, head_dim)
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.eps = eps

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                num_prefix_tokens: int = 0) -> torch.Tensor:
        """Args: x (B, N, dim); grid and num_prefix_tokens are only validated. Returns (B, N, dim)."""
        b, n, _ = x.shape
        if grid is not None:
            check_layout(n, grid, num_prefix_tokens)
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        dtype = q.dtype
        q, k, v = (F.elu(q.float()) + 1.0), (F.elu(k.float()) + 1.0), v.float()
        kv = k.transpose(-2, -1) @ v                                   # (B, h, p, p)
        norm = q @ k.sum(dim=2, keepdim=True).transpose(-2, -1)        # (B, h, N, 1)
        out = (q @ kv) / (norm + self.eps)
        return self.proj_drop(self.proj(out.to(dtype).transpose(1, 2).reshape(b, n, -1)))
