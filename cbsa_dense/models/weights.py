"""Weights-only initialization of a whole model (encoder + head) from any supported file.

Pure functions: :func:`model_state_dict_from` turns what a file holds into keys of the model
(``encoder.*``, ``head.*`` ...), recognizing, in order: this project's Lightning checkpoints
(``model.*``), the authors' released Segmenter checkpoints, the authors' released CBT classification
checkpoints (encoder only), timm / DINOv2 ViT weights (encoder only), and plain state dicts of the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cbsa_dense.models.checkpoint import LoadReport, load_matching, read_state_dict


def _prefixed(state_dict: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in state_dict.items()}


def model_state_dict_from(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a foreign or own state dict onto ``model``'s key space (see the module docstring)."""
    from cbsa_dense.models.encoders.cbt import convert_cbt_checkpoint
    from cbsa_dense.models.encoders.vit import ViTEncoder, adapt_timm_state_dict
    from cbsa_dense.models.official import convert_segmenter_state_dict, is_segmenter_state_dict

    if state_dict and all(k.startswith("module.") for k in state_dict):  # DDP-wrapped saves
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if any(k.startswith("model.") for k in state_dict):                   # our Lightning checkpoints
        return {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    if is_segmenter_state_dict(state_dict):                               # authors' segmentation release
        return convert_segmenter_state_dict(state_dict)
    encoder = getattr(model, "encoder", None)
    if any(k.startswith("transformer.layers.") for k in state_dict):      # authors' CBT release
        return _prefixed(convert_cbt_checkpoint(state_dict), "encoder.")
    own = model.state_dict()
    timm_like = "patch_embed.proj.weight" in state_dict and "encoder.patch_embed.proj.weight" not in state_dict
    if timm_like and isinstance(encoder, ViTEncoder):                     # timm / DINOv2 ViT weights
        return _prefixed(adapt_timm_state_dict(state_dict, encoder), "encoder.")
    if timm_like and encoder is not None and not any(k in own for k in state_dict):
        return _prefixed(state_dict, "encoder.")
    return state_dict


def load_model_weights(model: nn.Module, path: str | Path) -> LoadReport:
    """Weights-only init of ``model`` from ``path``; tensors whose shapes differ (a head trained for
    another class count) stay at their fresh initialization and are reported."""
    state_dict = model_state_dict_from(read_state_dict(path), model)
    return load_matching(model, state_dict, source=str(path))
