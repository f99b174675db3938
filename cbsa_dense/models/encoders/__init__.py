"""Encoders: ``encoder(images) -> list of NCHW maps`` with ``out_channels`` / ``out_strides`` (see base)."""

from cbsa_dense.models.encoders.base import Encoder, FeatureSpec, TokenEncoder, declared_outputs
from cbsa_dense.models.encoders.cbt import CBT_SIZES, CBTEncoder, convert_cbt_checkpoint
from cbsa_dense.models.encoders.vit import ViTEncoder, adapt_timm_state_dict

__all__ = ["CBT_SIZES", "CBTEncoder", "Encoder", "FeatureSpec", "TokenEncoder", "declared_outputs", "ViTEncoder", "adapt_timm_state_dict",
           "convert_cbt_checkpoint"]
