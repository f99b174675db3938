"""Zero-shot "attention segmentation": score the argmax-over-representatives map against ground truth.

The paper's emergent-segmentation experiment: each patch goes to the representative that extracts it
most strongly; those clusters are unlabeled, so each cluster of an image is given the ground-truth
class it overlaps most (many-to-one majority vote per image, ignored pixels excluded). The relabelled
maps are then scored with the project's exact mIoU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cbsa_dense.interpret.capture import CapturedExtraction


def representative_argmax(record: CapturedExtraction, size: tuple[int, int], head: int | None = None) -> torch.Tensor:
    """Per-pixel index of the strongest representative, upsampled (nearest) to ``size``.

    Args:
        record: one captured layer.
        size: output (H, W) in pixels.
        head: a head index, or ``None`` to sum the heads' extraction weights.

    Returns:
        (B, H, W) int64 in ``[0, m)``.
    """
    maps = record.patch_maps()                                   # (B, heads, m, h, w)
    maps = maps.sum(1) if head is None else maps[:, head]
    labels = maps.argmax(dim=1, keepdim=True).float()            # (B, 1, h, w)
    return F.interpolate(labels, size=size, mode="nearest")[:, 0].long()


def majority_relabel(clusters: torch.Tensor, target: torch.Tensor, num_clusters: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Give each cluster of one image its most frequent ground-truth class (ignored pixels excluded).

    Args:
        clusters: (H, W) cluster ids in ``[0, num_clusters)``.
        target: (H, W) ground-truth classes with ``ignore_index``.
        num_clusters: number of clusters m.

    Returns:
        (H, W) class predictions; clusters covering only ignored pixels predict ``ignore_index``.
    """
    keep = target != ignore_index
    num_classes = int(target[keep].max().item()) + 1 if keep.any() else 1
    votes = torch.bincount(clusters[keep] * num_classes + target[keep].long(),
                           minlength=num_clusters * num_classes).reshape(num_clusters, num_classes)
    mapping = votes.argmax(dim=1)
    mapping[votes.sum(dim=1) == 0] = ignore_index
    return mapping[clusters]
