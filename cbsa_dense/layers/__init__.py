"""Torch-only building blocks. Every attention layer has the call contract
``layer(x: (B, N, dim), grid: (H, W), num_prefix_tokens: int = 0) -> (B, N, dim)``.
"""

from cbsa_dense.layers.base import AttnLayer, TokenMixer
from cbsa_dense.layers.block import Block
from cbsa_dense.layers.cbsa_attention import CBSAAttention
from cbsa_dense.layers.ista import ISTA
from cbsa_dense.layers.linear_attention import LinearAttention
from cbsa_dense.layers.softmax_attention import SoftmaxAttention

__all__ = ["AttnLayer", "Block", "CBSAAttention", "ISTA", "LinearAttention", "SoftmaxAttention", "TokenMixer"]
