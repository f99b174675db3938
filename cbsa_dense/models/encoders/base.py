"""The encoder output contract and the token plumbing shared by the ViT and CBT encoders.

Contract (every :class:`Encoder`): ``encoder(images: (B, C, H, W)) -> list[Tensor]``, one NCHW feature
map per declared output, with ``encoder.out_channels[i]`` channels at stride ``encoder.out_strides[i]``
(spatial size ``ceil(H / stride)``, ``ceil(W / stride)``); ``encoder.feature_info`` gives the same as
:class:`FeatureSpec` pairs (timm's ``feature_info``, detectron2's ``ShapeSpec``). Prefix tokens (CLS,
registers) are dropped. Both tasks build their neck and head FROM these declarations (the factories
receive the channels and strides), so no width is typed twice in a config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from cbsa_dense.errors import ConfigError


class FeatureSpec(NamedTuple):
    """One declared encoder output: its channels and its stride in input pixels."""

    channels: int
    stride: int


class Encoder(nn.Module):
    """Base class of encoders: subclasses set ``out_channels`` and ``out_strides`` (one entry per output
    map) in ``__init__``. Subclass it to plug in your own backbone: configs then accept it by class name
    (``encoder: {class_path: MyEncoder}``) and the tasks build their heads from its declarations."""

    out_channels: list[int]
    out_strides: list[int]

    @property
    def feature_info(self) -> list[FeatureSpec]:
        """The declared outputs, finest first as produced: ``[FeatureSpec(channels, stride), ...]``."""
        return [FeatureSpec(int(c), int(s)) for c, s in zip(self.out_channels, self.out_strides)]


def declared_outputs(module: nn.Module) -> tuple[list[int], list[int]]:
    """``(out_channels, out_strides)`` declared by an encoder (or a neck); ConfigError if it declares none."""
    channels, strides = getattr(module, "out_channels", None), getattr(module, "out_strides", None)
    if not channels or not strides or len(channels) != len(strides):
        raise ConfigError(f"{type(module).__name__} must declare out_channels and out_strides (one entry per "
                          f"output map; got {channels!r} and {strides!r}): subclass "
                          "cbsa_dense.models.encoders.Encoder")
    return [int(c) for c in channels], [int(s) for s in strides]


class TokenEncoder(Encoder):
    """Base of plain (single-stride) transformer encoders over patch tokens.

    Subclasses create ``patch_embed`` (images -> (B, H', W', C) tokens; it exposes ``grid_size``, the
    grid the position embedding was made for), ``blocks`` (each called as ``block(x, grid, prefix)``)
    and ``norm``, then call :meth:`_init_tokens`.
    """

    patch_embed: nn.Module
    blocks: nn.ModuleList
    norm: nn.Module

    def _init_tokens(self, embed_dim: int, grid_size: tuple[int, int], stride: int, class_token: bool,
                     reg_tokens: int, no_embed_class: bool, out_indices: Sequence[int], depth: int,
                     final_norm: bool, grad_checkpointing: bool) -> None:
        self.embed_dim = embed_dim
        self.patch_size = stride
        self.no_embed_class = no_embed_class
        self.num_reg_tokens = reg_tokens
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        embed_len = grid_size[0] * grid_size[1] + (0 if no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        indices = [i if i >= 0 else depth + i for i in out_indices]
        if not indices or any(not 0 <= i < depth for i in indices) or sorted(set(indices)) != indices:
            raise ConfigError(f"out_indices must be increasing block indices in [-{depth}, {depth}), got "
                             f"{list(out_indices)}")
        self.out_indices = indices
        self.out_channels = [embed_dim] * len(indices)
        self.out_strides = [stride] * len(indices)
        self.final_norm = final_norm
        self.grad_checkpointing = grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass (saves memory, costs ~1/3 more compute)."""
        self.grad_checkpointing = enable

    def set_input_size(self, img_size: tuple[int, int]) -> None:
        """Resample the position embedding to the grid of ``img_size`` (H, W) once, in place, so that
        inputs of that size need no per-call resampling (faster inference, simpler exported graphs)."""
        stride = self.patch_size
        grid = (-(-int(img_size[0]) // stride), -(-int(img_size[1]) // stride))
        old = tuple(self.patch_embed.grid_size)
        if grid == old:
            return
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        with torch.no_grad():
            resampled = resample_abs_pos_embed(self.pos_embed.data, new_size=grid, old_size=old,
                                               num_prefix_tokens=prefix)
        self.pos_embed = nn.Parameter(resampled, requires_grad=self.pos_embed.requires_grad)
        self.patch_embed.grid_size = grid

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Add (resampled) position embeddings and prepend prefix tokens. x (B, H, W, C) -> (B, N, C)."""
        b, h, w, c = x.shape
        pos = self.pos_embed
        prefix = 0 if self.no_embed_class else self.num_prefix_tokens
        if (h, w) != tuple(self.patch_embed.grid_size):
            pos = resample_abs_pos_embed(pos, new_size=(h, w), old_size=self.patch_embed.grid_size,
                                         num_prefix_tokens=prefix)
        x = x.reshape(b, h * w, c)
        tokens = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.no_embed_class:
            return torch.cat([*tokens, x + pos], dim=1)
        return torch.cat([*tokens, x], dim=1) + pos

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The first block's input: patch tokens with position embeddings and prefix tokens (B, N, C),
        and the patch grid (H, W)."""
        x = self.patch_embed(images)
        return self._pos_embed(x), (x.shape[1], x.shape[2])

    def forward_tokens(self, images: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Run the blocks; returns the token sequences (B, N, C) at ``out_indices`` and the grid."""
        x, grid = self.embed(images)
        outputs = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, grid, self.num_prefix_tokens, use_reentrant=False)
            else:
                x = block(x, grid, self.num_prefix_tokens)
            if i in self.out_indices:
                outputs.append(self.norm(x) if (i == last and self.final_norm) else x)
        return outputs, grid

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (B, C, H, W) -> list of (B, embed_dim, ceil(H/stride), ceil(W/stride)), one per out index."""
        tokens, (h, w) = self.forward_tokens(images)
        p = self.num_prefix_tokens
        return [t[:, p:p + h * w].reshape(t.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
                for t in tokens]
