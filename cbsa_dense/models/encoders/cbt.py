"""The paper's CBT encoder: conv stem, CBSA attention + ISTA blocks, learned position embedding."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from timm.layers import to_2tuple, trunc_normal_
from torch import nn

from cbsa_dense.errors import ConfigError
from cbsa_dense.layers.cbsa_attention import CBSAAttention
from cbsa_dense.layers.ista import ISTA
from cbsa_dense.models.encoders.base import TokenEncoder

#: The paper's sizes (Table "CBT encoders"): embed_dim, depth, heads. dim_head is 64, m = 8x8.
CBT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


class ConvStem(nn.Module):
    """Four 3x3 stride-2 convs without bias, BatchNorm + GELU between (3 -> d/8 -> d/4 -> d/2 -> d).

    Output stride 16, tokens as (B, H', W', d) with H' = ceil(H / 16). ``grid_size`` is the grid of
    ``img_size`` (what the position embedding is made for).
    """

    def __init__(self, img_size: tuple[int, int], in_chans: int, embed_dim: int) -> None:
        super().__init__()
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        layers: list[nn.Module] = []
        for i in range(4):
            layers.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=False))
            layers.append(nn.BatchNorm2d(widths[i + 1]))
            if i < 3:
                layers.append(nn.GELU())
        self.proj = nn.Sequential(*layers)
        self.grid_size = tuple(-(-s // 16) for s in img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, ceil(H/16), ceil(W/16), d)."""
        return self.proj(x).permute(0, 2, 3, 1)


class CBTBlock(nn.Module):
    """``x = x + CBSA(LN(x)); x = ISTA(LN(x))`` - no residual around ISTA (the paper's block)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, rep_grid: tuple[int, int],
                 legacy_shifted_grid: bool, step_init: float | None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CBSAAttention(dim, num_heads, head_dim=head_dim, grid=rep_grid,
                                  legacy_shifted_grid=legacy_shifted_grid, step_init=step_init)
        self.norm2 = nn.LayerNorm(dim)
        self.ista = ISTA(dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), grid, num_prefix_tokens)
        return self.ista(self.norm2(x))


class CBTEncoder(TokenEncoder):
    """CBT (Contract-and-Broadcast Transformer) encoder, stride 16.

    Args:
        img_size: size the position embedding is made for (resampled for other sizes).
        in_chans: input channels.
        embed_dim: token width (tiny 192, small 384, base 768, large 1024).
        depth: number of blocks (12; 24 for large).
        num_heads: heads (3 / 6 / 12 / 16).
        head_dim: width per head (64).
        rep_grid: representative grid (8x8 in the paper).
        num_classes: if > 0, an ImageNet-style classifier ``head`` on the normalized CLS token (used by
            :meth:`classify`; ``forward`` returns feature maps either way).
        out_indices: blocks whose outputs are returned.
        final_norm: normalize the last block's output when it is returned.
        legacy_shifted_grid: the released classification code's CLS-shifted pooling (import its
            checkpoints with this on to reproduce them exactly).
        step_init: CBSA step-size init (``None`` = N(0, 1) as released).
        grad_checkpointing: activation checkpointing of every block during training.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, in_chans: int = 3, embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 6, head_dim: int = 64, rep_grid: tuple[int, int] = (8, 8),
                 num_classes: int = 0, out_indices: Sequence[int] = (-1,), final_norm: bool = True,
                 legacy_shifted_grid: bool = False, step_init: float | None = None,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        if embed_dim % 8:
            raise ConfigError(f"CBT's conv stem needs embed_dim divisible by 8, got {embed_dim}")
        self.patch_embed = ConvStem(to_2tuple(img_size), in_chans, embed_dim)
        self._init_tokens(embed_dim, self.patch_embed.grid_size, 16, True, 0, False, out_indices, depth,
                          final_norm, grad_checkpointing)
        self.blocks = nn.ModuleList(
            CBTBlock(embed_dim, num_heads, head_dim, tuple(rep_grid), legacy_shifted_grid, step_init)
            for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @classmethod
    def from_size(cls, size: str, **kwargs) -> CBTEncoder:
        """Build one of the paper's sizes: ``"tiny"``, ``"small"``, ``"base"`` or ``"large"``."""
        if size not in CBT_SIZES:
            raise ConfigError(f"unknown CBT size {size!r}; choose from {sorted(CBT_SIZES)}")
        return cls(**{**CBT_SIZES[size], **kwargs})

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, num_classes) from the normalized CLS token of the last block."""
        if self.head is None:
            raise RuntimeError("this CBTEncoder has no classification head (num_classes=0)")
        x = self.patch_embed(images)
        grid = (x.shape[1], x.shape[2])
        x = self._pos_embed(x)
        for block in self.blocks:
            x = block(x, grid, self.num_prefix_tokens)
        return self.head(self.norm(x)[:, 0])


_CBT_RULES = [
    (r"^transformer\.layers\.(\d+)\.0\.norm\.", r"blocks.\1.norm1."),
    (r"^transformer\.layers\.(\d+)\.0\.fn\.proj\.", r"blocks.\1.attn.qkv."),
    (r"^transformer\.layers\.(\d+)\.0\.fn\.to_out\.(?:0\.)?", r"blocks.\1.attn.proj."),
    (r"^transformer\.layers\.(\d+)\.0\.fn\.(step_x|step_rep)$", r"blocks.\1.attn.\2"),
    (r"^transformer\.layers\.(\d+)\.1\.norm\.", r"blocks.\1.norm2."),
    (r"^transformer\.layers\.(\d+)\.1\.fn\.weight$", r"blocks.\1.ista.weight"),
    (r"^pos_embedding$", "pos_embed"),
    (r"^mlp_head\.0\.", "norm."),
    (r"^mlp_head\.1\.", "head."),
]

#: The released stem: ``proj = Sequential(conv3x3, GELU, conv3x3, GELU, conv3x3, GELU, conv3x3)`` with
#: ``conv3x3 = Sequential(Conv2d, SyncBatchNorm)``: stage ``s`` is ``proj.{2s}.0`` (conv), ``proj.{2s}.1`` (BN).
_RELEASED_STEM = re.compile(r"^to_patch_embedding\.proj\.(\d+)\.([01])\.(.+)$")


def _stem_key(key: str) -> str | None:
    """Released nested stem key -> :class:`ConvStem`'s flat ``patch_embed.proj.{3s, 3s+1}`` key."""
    match = _RELEASED_STEM.match(key)
    if not match or int(match.group(1)) % 2:
        return None
    stage, part, rest = int(match.group(1)) // 2, int(match.group(2)), match.group(3)
    return f"patch_embed.proj.{3 * stage + part}.{rest}"


def convert_cbt_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a released CBT classification state dict (``*.pth.tar`` ``state_dict``) to :class:`CBTEncoder`.

    Pure function: strips ``module.``, renames ``transformer.layers.{i}.0.*`` (attention),
    ``.1.*`` (ISTA), the nested conv stem (``to_patch_embedding.proj.{0,2,4,6}.{0,1}.*`` -> our flat
    ``patch_embed.proj.{0,1,3,4,6,7,9,10}.*``), the position embedding and ``mlp_head``. Keys it does
    not know are kept as they are (so :func:`~cbsa_dense.models.checkpoint.load_matching` reports them).
    Load the result into a ``CBTEncoder(legacy_shifted_grid=True, num_classes=1000)`` to reproduce the
    released model exactly (:func:`cbsa_dense.models.official.load_cbt_checkpoint` does all of this).
    """
    out = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        stem = _stem_key(key)
        if stem is not None:
            key = stem
        else:
            for pattern, repl in _CBT_RULES:
                new, count = re.subn(pattern, repl, key)
                if count:
                    key = new
                    break
        out[key] = value
    return out


def adapt_cbt_state_dict(state_dict: dict[str, torch.Tensor], encoder: CBTEncoder) -> dict[str, torch.Tensor]:
    """A released CBT state dict for ``encoder`` (e.g. as a segmentation backbone): converted
    (:func:`convert_cbt_checkpoint`), the position embedding resampled to the encoder's grid, and the
    classification head dropped when the encoder has none."""
    from timm.layers import resample_abs_pos_embed

    out = convert_cbt_checkpoint(state_dict)
    if encoder.head is None:
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    pos = out.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape != encoder.pos_embed.shape:
        old = round((pos.shape[1] - 1) ** 0.5)
        if old * old == pos.shape[1] - 1 and pos.shape[2] == encoder.pos_embed.shape[2]:
            out["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(encoder.patch_embed.grid_size),
                                                      old_size=[old, old], num_prefix_tokens=1)
    return out
