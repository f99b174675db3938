"""Scale-out helpers built on Lightning's own strategies (nothing home-made)."""

from cbsa_dense.scale.fsdp import TransformerFSDPStrategy, transformer_block_types

__all__ = ["TransformerFSDPStrategy", "transformer_block_types"]
