"""Token-layout helpers shared by the attention layers.

Token sequences are ``[prefix tokens] + [H*W patch tokens, row-major] + [suffix tokens]`` (prefix: CLS,
registers; suffix: e.g. a decoder's class embeddings). Layers receive the patch grid ``(H, W)`` and the
prefix count explicitly; the suffix count is whatever remains.
"""

from __future__ import annotations

from cbsa_dense.errors import ConfigError


def check_layout(num_tokens: int, grid: tuple[int, int], num_prefix_tokens: int) -> int:
    """Validate a token layout and return the number of suffix tokens.

    Raises:
        ValueError: if the grid and prefix do not fit in ``num_tokens``.
    """
    h, w = grid
    if h < 1 or w < 1 or num_prefix_tokens < 0:
        raise ValueError(f"invalid layout: grid={tuple(grid)}, num_prefix_tokens={num_prefix_tokens}")
    suffix = num_tokens - num_prefix_tokens - h * w
    if suffix < 0:
        raise ValueError(f"{num_tokens} tokens cannot hold {num_prefix_tokens} prefix tokens and a "
                         f"{h}x{w} patch grid ({h * w} patches)")
    return suffix


def resolve_head_dim(dim: int, num_heads: int, head_dim: int | None) -> int:
    """``head_dim`` if given, else ``dim // num_heads`` (which must divide exactly)."""
    if head_dim is not None:
        if head_dim < 1:
            raise ConfigError(f"head_dim must be positive, got {head_dim}")
        return head_dim
    if dim % num_heads:
        raise ConfigError(f"dim={dim} is not divisible by num_heads={num_heads}; pass head_dim explicitly")
    return dim // num_heads
