"""How many detections an image keeps: a density set at the training crop, not a count per photo.

A detection head keeps at most ``detections_per_img`` boxes (FCOS / RetinaNet; ``box_detections_per_img`` for
the R-CNN heads) and ``topk_candidates`` per pyramid level before NMS. Those numbers were chosen for the
training crop (``image_size`` squared pixels). A whole photo evaluated ``native``, or merged from ``tiled``
crops, holds many crops' worth of objects: with the crop's count as its cap, a 2299x2472 photo of 574 tree
crowns kept 300 boxes and lost half its AP50. So here the limits are read as densities:

- an image of ``H x W`` input pixels keeps up to ``ceil(limit * H * W / image_size**2)`` detections, and never
  fewer than ``limit`` (a resized image keeps exactly the head's limit);
- in ``native`` mode the head's candidate limits (``topk_candidates``; the RPN's proposals for the R-CNN heads)
  are raised by the same factor for that forward pass;
- in ``tiled`` mode each tile keeps the head's limit and the merged photo the area limit.

An image that keeps exactly its limit may have lost boxes to it. :class:`LimitReport` counts those images and
says so in one line at the end of validate, test and predict; :func:`cbsa_dense.load`'s detection results carry
``at_limit`` per image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn


def head_nms_settings(head: nn.Module) -> tuple[float, int | None]:
    """The head's class-wise NMS IoU threshold and per-image detection limit (FCOS / RetinaNet attributes,
    or the R-CNN heads' ``roi_heads``)."""
    source = head.roi_heads if hasattr(head, "roi_heads") else head
    return float(getattr(source, "nms_thresh", 0.5)), getattr(source, "detections_per_img", None)


def image_limit(limit: int, crop: int, height: int, width: int) -> int:
    """Detections an ``height x width`` image keeps when ``limit`` is the head's count for a ``crop``-square."""
    return max(int(limit), math.ceil(int(limit) * int(height) * int(width) / (int(crop) * int(crop))))


@contextmanager
def raised_limits(head: nn.Module, factor: float) -> Iterator[None]:
    """The head's detection and candidate limits multiplied by ``factor`` (>= 1) inside the block."""
    changes: list[tuple[object, str, object]] = []
    if hasattr(head, "roi_heads"):
        changes.append((head.roi_heads, "detections_per_img", head.roi_heads.detections_per_img))
        for name in ("_pre_nms_top_n", "_post_nms_top_n"):
            counts = getattr(head.rpn, name)
            changes.append((head.rpn, name, counts))
    else:
        for name in ("detections_per_img", "topk_candidates"):
            if hasattr(head, name):
                changes.append((head, name, getattr(head, name)))
    try:
        if factor > 1:
            for owner, name, value in changes:
                if isinstance(value, dict):
                    setattr(owner, name, {**value, "testing": math.ceil(value["testing"] * factor)})
                else:
                    setattr(owner, name, math.ceil(value * factor))
        yield
    finally:
        for owner, name, value in changes:
            setattr(owner, name, value)


def keep_best(detections: dict[str, Tensor], limit: int) -> dict[str, Tensor]:
    """The ``limit`` best-scored detections of one image (all keys cut alike)."""
    if len(detections["scores"]) <= limit:
        return detections
    order = detections["scores"].argsort(descending=True)[:limit]
    return {key: value[order] for key, value in detections.items()}


@dataclass
class LimitReport:
    """Counts the images that kept exactly their detection limit (and so may have lost boxes to it)."""

    images: int = 0
    at_limit: int = 0
    largest: int = 0
    head_limit: int = 0

    def add(self, kept: Sequence[int], limits: Sequence[int], head_limit: int, count: bool = True) -> list[bool]:
        """Per image, whether it kept exactly its limit; recorded for :meth:`take_line` when ``count``."""
        flags = [k >= lim for k, lim in zip(kept, limits)]
        if not count:
            return flags
        self.images += len(flags)
        self.at_limit += sum(flags)
        self.largest = max([self.largest, *(lim for lim, f in zip(limits, flags) if f)])
        self.head_limit = head_limit
        return flags

    def take_line(self, stage: str) -> str | None:
        """The one-line report of the images counted since the last call (``None`` when none hit its limit)."""
        images, at_limit, largest, head = self.images, self.at_limit, self.largest, self.head_limit
        self.images = self.at_limit = self.largest = 0
        if not at_limit:
            return None
        return (f"{stage}: {at_limit} of {images} images kept as many detections as their limit allows (up to "
                f"{largest}: the head's detections_per_img={head} per training crop, scaled by the image's area), "
                f"so lower-scored boxes may be missing; raise model.init_args.head.init_args.detections_per_img "
                f"(box_detections_per_img for R-CNN heads) if the images hold more objects")
