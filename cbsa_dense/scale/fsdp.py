"""FSDP with the project's transformer blocks as the wrapping (and checkpointing) unit."""

from __future__ import annotations

import importlib

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from cbsa_dense.errors import ConfigError

#: Block classes FSDP wraps one by one (import paths, resolved lazily so heads stay optional).
BLOCK_TYPES = (
    "cbsa_dense.layers.block.Block",
    "cbsa_dense.models.encoders.cbt.CBTBlock",
)


def transformer_block_types(extra: list[str] | None = None) -> set[type[nn.Module]]:
    """The module classes treated as FSDP units: encoder blocks plus ``extra`` import paths."""
    types = set()
    for path in (*BLOCK_TYPES, *(extra or [])):
        module_name, _, cls_name = path.rpartition(".")
        try:
            types.add(getattr(importlib.import_module(module_name), cls_name))
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"FSDP block type {path!r} cannot be imported: {err}") from err
    return types


class TransformerFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` auto-wrapping every transformer block.

    Args:
        activation_checkpointing: also recompute each block's activations in the backward pass.
        extra_block_types: import paths of further classes to wrap (e.g. a custom decoder layer).
        sharding_strategy: ``FULL_SHARD`` (ZeRO-3), ``SHARD_GRAD_OP`` (ZeRO-2), ``HYBRID_SHARD`` ...
        state_dict_type: ``"full"`` (one consolidated checkpoint file) or ``"sharded"``.
        **kwargs: passed to ``FSDPStrategy`` (``cpu_offload``, ``mixed_precision``, ...).
    """

    def __init__(self, activation_checkpointing: bool = False, extra_block_types: list[str] | None = None,
                 sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full", **kwargs) -> None:
        blocks = transformer_block_types(extra_block_types)
        super().__init__(auto_wrap_policy=blocks,
                         activation_checkpointing_policy=blocks if activation_checkpointing else None,
                         sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)
