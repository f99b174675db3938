"""Optimizer parameter groups: weight-decay exclusions and layer-wise learning-rate decay.

Pure functions over ``named_parameters`` so they are testable without a Trainer. Each group carries an
``lr_scale`` that :func:`apply_lr_scale` folds into the group's ``lr`` once the optimizer exists (the
optimizer is created by an injected callable that only receives the groups).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

#: Parameter-name patterns never weight-decayed (besides every 1-D tensor: norms and biases).
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "reg_token", "cls_emb", "step_x", "step_rep", "query_embed")

#: Parameter-name patterns of CBSA's per-head step sizes (scalars initialized, not pretrained).
STEP_SIZE_PATTERNS = ("step_x", "step_rep")
#: Learning-rate multiplier of the CBSA step sizes (see :func:`param_groups`).
STEP_SIZE_LR_SCALE = 1.0

_BLOCK_RE = re.compile(r"(?:^|\.)encoder\.blocks\.(\d+)\.")


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise decay (BEiT/ViTDet convention).

    ``encoder.blocks.{i}.*`` -> ``i + 1``; any other ``encoder.*`` parameter (patch/position embedding,
    tokens) -> 0; everything outside the encoder (neck, head) -> ``num_layers + 1``.
    """
    match = _BLOCK_RE.search(name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith("encoder.") or ".encoder." in name:
        return 0 if "encoder.norm." not in name else num_layers
    return num_layers + 1


def param_groups(module: nn.Module, weight_decay: float | None = None, layer_decay: float | None = None,
                 num_layers: int | None = None, no_weight_decay: Iterable[str] = NO_WEIGHT_DECAY,
                 step_size_lr_scale: float | None = None, head_lr_scale: float = 1.0) -> list[dict]:
    """Split ``module``'s trainable parameters into optimizer groups.

    Args:
        module: the model (parameter names as in ``module.named_parameters()``).
        weight_decay: decay of the decayed groups; ``None`` leaves the optimizer's default.
        layer_decay: lr multiplier per block from the top (e.g. 0.65); ``None`` disables it.
        num_layers: encoder depth, required with ``layer_decay``.
        no_weight_decay: name substrings excluded from weight decay (plus all 1-D parameters).
        step_size_lr_scale: lr multiplier of the CBSA step sizes (``step_x``, ``step_rep``: per-head
            scalars of order 1, fresh when a softmax ViT's weights are loaded; Adam moves a parameter by
            about lr per step whatever its scale, so at a fine-tuning lr of 1e-4 they would barely move);
            on top of the layer decay. ``None`` = :data:`STEP_SIZE_LR_SCALE`.
        head_lr_scale: lr multiplier of every parameter outside the encoder (neck and head: freshly
            initialized when fine-tuning pretrained weights, they need a higher rate than the encoder).

    Returns:
        Groups with keys ``params``, ``lr_scale``, ``names`` and, for no-decay groups, ``weight_decay=0``.
    """
    if layer_decay is not None and (num_layers is None or not 0.0 < layer_decay <= 1.0):
        raise ValueError(f"layer_decay={layer_decay} needs 0 < layer_decay <= 1 and num_layers (got {num_layers})")
    skip = tuple(no_weight_decay)
    step_scale = STEP_SIZE_LR_SCALE if step_size_lr_scale is None else float(step_size_lr_scale)
    if not head_lr_scale > 0:
        raise ValueError(f"head_lr_scale={head_lr_scale} must be > 0")
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or any(s in name for s in skip)
        depth = layer_id(name, num_layers) if layer_decay is not None else 0
        is_step = step_scale != 1.0 and name.rpartition(".")[2] in STEP_SIZE_PATTERNS
        is_head = head_lr_scale != 1.0 and not (name.startswith("encoder.") or ".encoder." in name)
        key = (depth, no_decay, is_step, is_head)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - depth) if layer_decay is not None else 1.0
            scale *= step_scale if is_step else 1.0
            scale *= head_lr_scale if is_head else 1.0
            groups[key] = {"params": [], "names": [], "lr_scale": scale}
            if no_decay:
                groups[key]["weight_decay"] = 0.0
            elif weight_decay is not None:
                groups[key]["weight_decay"] = weight_decay
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def apply_lr_scale(optimizer) -> None:
    """Multiply each group's ``lr`` (and ``initial_lr`` if set) by its ``lr_scale``, once."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        if not group.get("_lr_scaled", False):
            group["lr"] = group["lr"] * scale
            group["_lr_scaled"] = True
