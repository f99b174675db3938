"""A straightforward CBSA written the way the authors' released code is: the speed baseline.

Pool with ``nn.AdaptiveAvgPool2d``, reshape/permute into (B, h, N, p) heads, explicit softmax
attention matrices for extraction and contraction, an explicit (B, h, N, p) broadcast, a
``rearrange``-style head merge and a separate output projection. Only the layout bugs of the released
code are fixed (the patch grid is passed, prefix/suffix tokens are excluded from pooling), so that it
computes exactly what :class:`~cbsa_dense.layers.CBSAAttention` (``variant="shared"``,
``broadcast="transpose"``) computes, with the same parameter names: its state dict loads unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from cbsa_dense.layers.cbsa_attention import CBSAAttention
from cbsa_dense.layers.tokens import check_layout


class ReferenceCBSA(nn.Module):
    """Authors-style CBSA (shared projection, transposed broadcast, untied output).

    Args:
        dim: token width d.
        num_heads: heads h.
        head_dim: width per head p.
        grid: representative grid (gh, gw).
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int = 64, grid: tuple[int, int] = (8, 8)) -> None:
        super().__init__()
        inner_dim = head_dim * num_heads
        self.heads = num_heads
        self.grid = tuple(grid)
        self.scale = head_dim ** -0.5
        self.attend = nn.Softmax(dim=-1)
        self.qkv = nn.Linear(dim, inner_dim, bias=False)
        self.step_x = nn.Parameter(torch.randn(num_heads, 1, 1))
        self.step_rep = nn.Parameter(torch.randn(num_heads, 1, 1))
        self.proj = nn.Linear(inner_dim, dim)
        self.pool = nn.AdaptiveAvgPool2d(output_size=self.grid)

    @classmethod
    def from_layer(cls, layer: CBSAAttention) -> ReferenceCBSA:
        """A reference with the weights of ``layer`` (which must be shared / transpose / untied)."""
        if layer.variant != "shared" or layer.broadcast != "transpose" or layer.proj is None or layer.grid is None:
            raise ValueError("ReferenceCBSA mirrors CBSAAttention(variant='shared', broadcast='transpose', "
                             f"tied_output=False, grid=(gh, gw)); got {layer.extra_repr()}")
        ref = cls(layer.qkv.in_features, layer.num_heads, layer.head_dim, layer.grid)
        ref.load_state_dict(layer.state_dict())
        return ref.to(layer.qkv.weight.device, layer.qkv.weight.dtype)

    def attention(self, query: torch.Tensor, key: torch.Tensor,
                  value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dots = (query @ key.transpose(-1, -2)) * self.scale
        attn = self.attend(dots.float()).to(dots.dtype)
        return attn @ value, attn

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
        """x (B, N, dim) -> (B, N, dim) (same contract as CBSAAttention)."""
        check_layout(x.shape[1], grid, num_prefix_tokens)
        w = self.qkv(x)
        b, n, c = w.shape
        h, wd = grid
        patches = w[:, num_prefix_tokens:num_prefix_tokens + h * wd]
        rep = self.pool(patches.reshape(b, h, wd, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        w = w.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3)
        rep = rep.reshape(b, rep.shape[1], self.heads, -1).permute(0, 2, 1, 3)
        rep_delta, attn = self.attention(rep, w, w)
        rep = rep + self.step_rep * rep_delta
        rep_delta, _ = self.attention(rep, rep, rep)
        x_delta = attn.transpose(-1, -2) @ rep_delta
        x_delta = self.step_x * x_delta
        x_delta = x_delta.permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.proj(x_delta)
