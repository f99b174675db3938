"""The softmax teacher of a CBSA encoder, and teacher-forced runs of its blocks.

A pretrained ViT turned CBSA (``CBSAAttention(variant="qkv")``) keeps the softmax ViT's ``qkv`` and ``proj``
weights under the same names. Its teacher is the same encoder with :class:`SoftmaxAttention` in those
blocks, holding the same weights, frozen. Teacher-forced means that each student block's attention gets
the teacher's own block input, so the error of one block does not reach the next.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from cbsa_dense.errors import ConfigError
from cbsa_dense.layers.cbsa_attention import CBSAAttention
from cbsa_dense.layers.softmax_attention import SoftmaxAttention
from cbsa_dense.models.encoders.base import TokenEncoder


def cbsa_blocks(encoder: nn.Module) -> list[int]:
    """Indices of the encoder's blocks whose attention is a :class:`CBSAAttention` of the ``qkv`` variant.

    Raises:
        ConfigError: the encoder is not a token encoder with blocks, has no CBSA block, or a CBSA block
            that cannot hold softmax weights (the ``shared`` variant has one projection for q = k = v, a
            tied output, or another head width than the block's).
    """
    if not isinstance(encoder, TokenEncoder):
        raise ConfigError(f"attention transfer needs a ViT-style encoder with blocks (ViTEncoder), not "
                          f"{type(encoder).__name__}")
    found = []
    for i, block in enumerate(encoder.blocks):
        attn = block.attn
        if not isinstance(attn, CBSAAttention):
            continue
        if attn.variant != "qkv" or attn.grid is None or attn.proj is None:
            raise ConfigError(f"attention transfer: block {i}'s CBSA layer has no softmax-compatible weights "
                              f"(variant={attn.variant!r}, grid={attn.grid}, tied_output={attn.tied_output}); it "
                              "needs variant: qkv (timm's qkv/proj, as loaded from a pretrained softmax ViT) "
                              "with pooled representatives")
        found.append(i)
    if not found:
        raise ConfigError("attention transfer: the encoder has no CBSA block (attn_layer: CBSAAttention with "
                          "variant: qkv); there is nothing to transfer")
    return found


def build_teacher(encoder: TokenEncoder) -> TokenEncoder:
    """A frozen copy of ``encoder`` with softmax attention in its CBSA blocks, holding their current ``qkv``
    and ``proj`` weights (call it before those weights train). Other blocks are copied as they are."""
    teacher = copy.deepcopy(encoder)
    for i in cbsa_blocks(encoder):
        student = encoder.blocks[i].attn
        softmax = SoftmaxAttention(student.qkv.in_features, student.num_heads, head_dim=student.head_dim,
                                   qkv_bias=student.qkv.bias is not None,
                                   proj_bias=student.proj.bias is not None)
        softmax.qkv.load_state_dict(student.qkv.state_dict())
        softmax.proj.load_state_dict(student.proj.state_dict())
        teacher.blocks[i].attn = softmax.to(student.qkv.weight)
    teacher.requires_grad_(False)
    return teacher.eval()


@dataclass
class BlockTargets:
    """What the teacher gives one block, for a batch: the normalized block input and the
    LayerScale-weighted attention output (the block's residual update)."""

    inputs: torch.Tensor                   # (B, N, dim): norm1 of the teacher's block input
    target: torch.Tensor                   # (B, N, dim): ls1(softmax attn(inputs))


@torch.no_grad()
def teacher_targets(teacher: TokenEncoder, images: torch.Tensor,
                    blocks: list[int]) -> tuple[dict[int, BlockTargets], tuple[int, int], torch.Tensor]:
    """Run the teacher on ``images``; return per listed block its :class:`BlockTargets`, the patch grid,
    and the teacher's final features (the last block's tokens, normalized)."""
    x, grid = teacher.embed(images)
    prefix = teacher.num_prefix_tokens
    targets = {}
    wanted = set(blocks)
    for i, block in enumerate(teacher.blocks):
        if i in wanted:
            inputs = block.norm1(x)
            targets[i] = BlockTargets(inputs, block.ls1(block.attn(inputs, grid, prefix)))
        x = block(x, grid, prefix)
    return targets, grid, teacher.norm(x)


def student_output(encoder: TokenEncoder, index: int, targets: BlockTargets, grid: tuple[int, int]) -> torch.Tensor:
    """Block ``index``'s LayerScale-weighted CBSA output for the teacher's normalized block input."""
    block = encoder.blocks[index]
    return block.ls1(block.attn(targets.inputs, grid, encoder.num_prefix_tokens))


def final_features(encoder: TokenEncoder, images: torch.Tensor) -> torch.Tensor:
    """The encoder's last block tokens after the final norm, running free (B, N, dim)."""
    x, grid = encoder.embed(images)
    for block in encoder.blocks:
        x = block(x, grid, encoder.num_prefix_tokens)
    return encoder.norm(x)
