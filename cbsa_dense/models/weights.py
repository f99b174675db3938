"""Weights-only initialization of a whole model (encoder + head) from any supported file.

:func:`map_weights` turns what a file holds into keys of the model (``encoder.*``, ``head.*`` ...) and
says what it recognized, in order: this project's Lightning checkpoints (``model.*``), the authors'
released Segmenter checkpoints, the authors' released CBT classification checkpoints (encoder only),
timm / DINOv2 ViT weights (encoder only), other encoder-only state dicts, and plain state dicts of the
model.

Loading policy (:func:`load_model_weights`): weights meant for the encoder (CBT, timm/DINOv2 ViT, other
encoder-only files) must fit it: a tensor the encoder lacks or has in another shape, or an encoder
tensor absent from the file, is a :class:`~cbsa_dense.errors.CheckpointError` naming the keys and
shapes. Only :data:`FRESH_ENCODER_KEYS` (CBSA step sizes, the encoder's classification head) may be
missing. A checkpoint of this project written by another task class (a segmentation checkpoint for a
detection model) is an error too. ``strict=False`` turns both into warnings and loads what fits. A head
trained for another class count keeps its fresh initialization and is reported (not an error).

The load report (logged; :class:`~cbsa_dense.models.checkpoint.LoadReport`) names what starts fresh by design
"new parameters, initialized fresh as expected": the :data:`FRESH_ENCODER_KEYS` and, for encoder-only weights,
everything outside the encoder (neck, head). Only the rest is listed as missing, unexpected or mismatched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cbsa_dense.models.checkpoint import (
    LoadReport,
    load_matching,
    read_checkpoint,
    state_dict_of,
)

#: Encoder parameters that encoder weights may lack (they start fresh): CBSA step sizes (absent from
#: softmax ViT checkpoints) and a classification head.
FRESH_ENCODER_KEYS = ("blocks.*.attn.step_x", "blocks.*.attn.step_rep", "blocks.*.attn.local.*", "head.*")

#: What :func:`map_weights` recognizes; the first three go to the encoder only.
ENCODER_KINDS = ("cbt", "timm", "encoder")


def _prefixed(state_dict: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in state_dict.items()}


def map_weights(state_dict: dict[str, torch.Tensor], model: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """Map a foreign or own state dict onto ``model``'s key space.

    Returns:
        ``(kind, state_dict)`` with kind ``"lightning"`` (this project's checkpoints), ``"segmenter"``
        (the authors' segmentation release), ``"cbt"`` (the authors' CBT release, to the encoder),
        ``"timm"`` (timm/DINOv2 ViT weights, to a :class:`ViTEncoder`), ``"encoder"`` (another
        encoder-only state dict) or ``"plain"`` (a state dict of the model itself).
    """
    from cbsa_dense.models.encoders.cbt import CBTEncoder, adapt_cbt_state_dict, convert_cbt_checkpoint
    from cbsa_dense.models.encoders.vit import ViTEncoder, adapt_timm_state_dict
    from cbsa_dense.models.official import convert_segmenter_state_dict, is_segmenter_state_dict

    if state_dict and all(k.startswith("module.") for k in state_dict):  # DDP-wrapped saves
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    if any(k.startswith("model.") for k in state_dict):                   # our Lightning checkpoints
        return "lightning", {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    if is_segmenter_state_dict(state_dict):                               # authors' segmentation release
        return "segmenter", convert_segmenter_state_dict(state_dict)
    encoder = getattr(model, "encoder", None)
    if any(k.startswith("transformer.layers.") for k in state_dict):      # authors' CBT release
        if isinstance(encoder, CBTEncoder):
            return "cbt", _prefixed(adapt_cbt_state_dict(state_dict, encoder), "encoder.")
        return "cbt", _prefixed(convert_cbt_checkpoint(state_dict), "encoder.")
    own = model.state_dict()
    timm_like = "patch_embed.proj.weight" in state_dict and "encoder.patch_embed.proj.weight" not in state_dict
    if timm_like and isinstance(encoder, ViTEncoder):                     # timm / DINOv2 ViT weights
        return "timm", _prefixed(adapt_timm_state_dict(state_dict, encoder), "encoder.")
    if timm_like and encoder is not None and not any(k in own for k in state_dict):
        return "encoder", _prefixed(state_dict, "encoder.")
    return "plain", state_dict


def model_state_dict_from(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a foreign or own state dict onto ``model``'s key space (:func:`map_weights` without the kind)."""
    return map_weights(state_dict, model)[1]


def load_model_weights(model: nn.Module, path: str | Path, *, strict: bool = True,
                       check_checkpoint: Callable[[dict], None] | None = None,
                       opt_out: str = "weights_strict: false") -> LoadReport:
    """Weights-only init of ``model`` from ``path`` under the module docstring's loading policy.

    Args:
        model: the task's model (``encoder``, ``head`` ...).
        path: any supported file (see :func:`map_weights`).
        strict: encoder weights must fit the encoder, and a checkpoint of this project must pass
            ``check_checkpoint``; ``False`` logs the problems and loads what fits.
        check_checkpoint: called with a checkpoint of this project (the whole read file) under ``strict``; the
            task layer checks there that it was written by the same task class.
        opt_out: the setting that turns ``strict`` off, named in errors.

    Returns:
        The load report (tensors whose shapes differ outside the encoder, e.g. a head trained for another
        class count, stay at their fresh initialization and are listed).

    Raises:
        CheckpointError: unreadable file (see :func:`~cbsa_dense.models.checkpoint.read_checkpoint`), and
            under ``strict`` the problems above (one line naming the file, keys and shapes).
    """
    checkpoint = read_checkpoint(path, what="weights")
    kind, state_dict = map_weights(state_dict_of(checkpoint, path), model)
    if kind == "lightning" and check_checkpoint is not None and strict:
        check_checkpoint(checkpoint)
    encoder_weights = kind in ENCODER_KINDS and getattr(model, "encoder", None) is not None
    fresh = [f"encoder.{k}" for k in FRESH_ENCODER_KEYS]
    if encoder_weights:       # encoder-only weights: the neck and head start fresh by design
        fresh += sorted({f"{key.partition('.')[0]}.*" if "." in key else key
                         for key in model.state_dict() if not key.startswith("encoder.")})
    return load_matching(model, state_dict, source=str(path), strict=strict and encoder_weights,
                         scope="encoder.", may_reinit=fresh, opt_out=opt_out)
