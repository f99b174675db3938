"""Tiled detection: a large image as overlapping tiles at its own pixel size, detections merged across tiles.

Tiles of ``tile x tile`` pixels start every ``tile - overlap`` pixels, the last row and column aligned to the
image's far edge (no partial tiles; an image side shorter than the tile is one tile of that side). Each
tile keeps only the detections whose centre lies in the part of the image it owns: the overlap between two
neighbours is split at its middle. An object no larger than the overlap lies whole in the tile that owns
its centre, so it is found once, by a tile that sees all of it; the boxes that a neighbour cut at its
border belong to the neighbour's share and are dropped. A class-wise NMS over the kept boxes (the head's
IoU threshold) then merges what the ownership rule leaves, e.g. an object larger than the overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

#: ``detect(tiles (T, 3, h, w), sizes [(h, w)] * T) -> per tile {"boxes" xyxy tile pixels, "scores", "labels"}``
Detect = Callable[[Tensor, list[tuple[int, int]]], list[dict[str, Tensor]]]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one side: every ``tile - overlap`` pixels, the last at ``length - tile``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return sorted({min(i * step, length - tile) for i in range(count)})


def owned_ranges(starts: Sequence[int], tile: int, length: int) -> list[tuple[float, float]]:
    """Per tile, the [low, high) range of detection centres it keeps: overlaps split at their middle."""
    cuts = [(nxt + start + min(tile, length)) / 2 for start, nxt in zip(starts, starts[1:])]
    lows = [-math.inf, *cuts]
    highs = [*cuts, math.inf]
    return list(zip(lows, highs))


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, float, float, float, float]]:
    """``(y0, x0, y_low, y_high, x_low, x_high)`` per tile: its origin and the centres it owns."""
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    y_own, x_own = owned_ranges(ys, tile, height), owned_ranges(xs, tile, width)
    return [(y0, x0, *yr, *xr) for y0, yr in zip(ys, y_own) for x0, xr in zip(xs, x_own)]


def detect_tiled(detect: Detect, image: Tensor, tile: int, overlap: int, nms_thresh: float,
                 max_detections: int | None, tiles_per_batch: int = 4) -> dict[str, Tensor]:
    """Detections of one image (3, H, W) in its pixels, from overlapping tiles.

    Args:
        detect: the model on a batch of tiles (see :data:`Detect`).
        image: the normalized image at the size it is detected at (no padding).
        tile: tile side in pixels; ``overlap``: pixels shared by neighbouring tiles (< tile / 2).
        nms_thresh: IoU above which a lower-scored box of the same class is merged away.
        max_detections: keep the best this many after merging (``None``: all).
        tiles_per_batch: tiles run in one forward pass.

    Returns:
        ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)}``, sorted by decreasing score.
    """
    _, height, width = image.shape
    grid = tile_grid(height, width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    kept: list[dict[str, Tensor]] = []
    for first in range(0, len(grid), tiles_per_batch):
        chunk = grid[first:first + tiles_per_batch]
        crops = torch.stack([image[:, y0:y0 + th, x0:x0 + tw] for y0, x0, *_ in chunk])
        for (y0, x0, y_lo, y_hi, x_lo, x_hi), det in zip(chunk, detect(crops, [(th, tw)] * len(chunk))):
            boxes = det["boxes"] + det["boxes"].new_tensor([x0, y0, x0, y0])
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            own = (cy >= y_lo) & (cy < y_hi) & (cx >= x_lo) & (cx < x_hi)
            kept.append({"boxes": boxes[own], "scores": det["scores"][own], "labels": det["labels"][own]})
    boxes = torch.cat([k["boxes"] for k in kept])
    scores = torch.cat([k["scores"] for k in kept])
    labels = torch.cat([k["labels"] for k in kept])
    keep = batched_nms(boxes, scores, labels, nms_thresh)          # sorted by decreasing score
    if max_detections is not None:
        keep = keep[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
