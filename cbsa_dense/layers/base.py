"""The contract of token mixers (attention layers), and the factory type that builds them.

Every token mixer is called as ``layer(x: (B, N, dim), grid: (H, W), num_prefix_tokens: int = 0) ->
(B, N, dim)`` and built as ``layer_type(dim, num_heads)``. Encoders, blocks and decoders take such a
factory (``attn_layer``), so a config swaps CBSA for softmax or linear attention in one line. Subclass
:class:`TokenMixer` to plug in your own: configs then accept it by class name and ``--help`` lists it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


class TokenMixer(nn.Module):
    """Base class of attention layers: ``forward(x (B, N, dim), grid (H, W), num_prefix_tokens=0)``."""


#: ``attn_layer(dim, num_heads) -> TokenMixer``: a class (``CBSAAttention``) or a partial of one.
AttnLayer = Callable[[int, int], TokenMixer]
