"""One forward pass of a segmentation or detection model, whichever it is."""

from __future__ import annotations

import torch
from torch import nn


def is_detector(model: nn.Module) -> bool:
    from cbsa_dense.models.detector import Detector

    return isinstance(model, Detector)


def forward_any(model: nn.Module, x: torch.Tensor):
    """Segmentation: logits (B, C, H, W); detection (eval mode): per-image detection dicts."""
    if is_detector(model):
        return model(x, [tuple(x.shape[-2:])] * x.shape[0])
    return model(x)
