"""Encoders: ``encoder(images) -> list of NCHW maps`` with ``out_channels`` / ``out_strides`` (see base)."""

from cbsa_dense.models.encoders.base import TokenEncoder
from cbsa_dense.models.encoders.cbt import CBT_SIZES, CBTEncoder, convert_cbt_checkpoint
from cbsa_dense.models.encoders.vit import ViTEncoder, adapt_timm_state_dict

__all__ = ["CBT_SIZES", "CBTEncoder", "TokenEncoder", "ViTEncoder", "adapt_timm_state_dict",
           "convert_cbt_checkpoint"]
