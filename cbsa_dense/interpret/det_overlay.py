"""Detection pictures people can read: labelled boxes on an image, ground truth beside predictions.

Pure functions on uint8 (H, W, 3) arrays and xyxy pixel boxes (PIL ``ImageDraw``; no matplotlib).
Line width and font size follow the image's longest side (:func:`line_width`, :func:`font_size`), so a
400 px and a 2500 px photo read alike at the size a screen shows them. Crowded images stay readable:
lines are thin, a box whose shorter side is under one text line gets no label, and labels never cover
each other (the highest-scoring box gets its label first; a label that would overlap one already drawn
is dropped, its box still drawn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from cbsa_dense.data.seg_labels import default_palette

#: Pixels between the two panels of :func:`side_by_side`.
PANEL_GAP = 8
#: Background of the title strip and of the gap between panels.
TITLE_BACKGROUND = (32, 32, 32)


def line_width(height: int, width: int) -> int:
    """Box outline width in pixels: 1 up to ~900 px on the longest side, then one more per 600 px."""
    return max(1, round(max(height, width) / 600))


def font_size(height: int, width: int) -> int:
    """Label font size in pixels: 1/55 of the longest side, at least 11 (about 45 px on a 2500 px photo)."""
    return max(11, round(max(height, width) / 55))


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                                # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _text_colour(background: Sequence[int]) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in background)
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _as_array(values, dtype, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype).reshape(-1, *shape_tail)


def _draw(image: np.ndarray, boxes, labels, texts: list[str], order: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Boxes (all of ``order``, last on top) and their labels (first of ``order`` first, no overlaps)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape}")
    h, w = image.shape[:2]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    lw, size = line_width(h, w), font_size(h, w)
    font = _font(size)
    colours = [tuple(int(c) for c in palette[int(label) % len(palette)]) for label in labels]
    for i in order[::-1]:                            # lowest first: the most confident boxes end on top
        x0, y0, x1, y1 = boxes[i]
        x0, y0 = min(max(x0, 0.0), w - 1.0), min(max(y0, 0.0), h - 1.0)
        x1, y1 = min(max(x1, x0), w - 1.0), min(max(y1, y0), h - 1.0)
        draw.rectangle((round(x0), round(y0), round(x1), round(y1)), outline=colours[i], width=lw)
    taken = np.zeros((h, w), dtype=bool)
    pad = max(1, size // 6)
    for i in order:
        x0, y0, x1, y1 = boxes[i]
        if min(x1 - x0, y1 - y0) < size or not texts[i]:
            continue                                 # a box smaller than a text line: no label
        left, top, right, bottom = draw.textbbox((0, 0), texts[i], font=font)
        tw, th = right - left + 2 * pad, bottom - top + 2 * pad
        lx = int(min(max(round(x0), 0), max(w - tw, 0)))
        ly = int(round(y0) - th if round(y0) - th >= 0 else max(round(y0), 0))   # above the box, else inside
        ly = min(ly, max(h - th, 0))
        region = taken[ly:ly + th, lx:lx + tw]
        if region.any():
            continue                                 # would cover a more confident box's label
        region[...] = True
        draw.rectangle((lx, ly, lx + tw - 1, ly + th - 1), fill=colours[i])
        draw.text((lx + pad - left, ly + pad - top), texts[i], font=font, fill=_text_colour(colours[i]))
    return np.asarray(canvas)


def draw_detections(image: np.ndarray, boxes, scores, labels, class_names: Sequence[str] | None = None,
                    score_threshold: float = 0.3, palette: np.ndarray | None = None) -> np.ndarray:
    """Predicted boxes with ``score >= score_threshold``, each labelled ``"<class> <score>"`` (e.g. ``tree 0.87``).

    Args:
        image: (H, W, 3) uint8.
        boxes: (N, 4) xyxy in ``image`` pixels (tensor or array).
        scores: (N,) in [0, 1].
        labels: (N,) contiguous class indices.
        class_names: name of each class index (default: the index).
        score_threshold: boxes scoring below it are not drawn.
        palette: (C, 3) uint8 class colours (default :func:`~cbsa_dense.data.seg_labels.default_palette`).

    Returns:
        A new (H, W, 3) uint8 image; ``image`` is not modified.
    """
    boxes = _as_array(boxes, np.float64, (4,))
    scores, labels = _as_array(scores, np.float64), _as_array(labels, np.int64)
    keep = np.flatnonzero(scores >= score_threshold)
    order = keep[np.argsort(-scores[keep], kind="stable")]
    names = _names(class_names, labels)
    texts = [f"{names(label)} {score:.2f}" for label, score in zip(labels, scores)]
    return _draw(image, boxes, labels, texts, order, _palette(palette, labels, class_names))


def draw_ground_truth(image: np.ndarray, boxes, labels, class_names: Sequence[str] | None = None,
                      iscrowd=None, palette: np.ndarray | None = None) -> np.ndarray:
    """Ground-truth boxes labelled with their class name (``"<class> crowd"`` for crowd regions).

    Args:
        image: (H, W, 3) uint8.
        boxes: (N, 4) xyxy in ``image`` pixels.
        labels: (N,) contiguous class indices.
        class_names: name of each class index (default: the index).
        iscrowd: (N,) 0/1 crowd flags (default: none is a crowd).
        palette: (C, 3) uint8 class colours (default :func:`~cbsa_dense.data.seg_labels.default_palette`).

    Returns:
        A new (H, W, 3) uint8 image. Labels go to the largest boxes first.
    """
    boxes = _as_array(boxes, np.float64, (4,))
    labels = _as_array(labels, np.int64)
    crowd = np.zeros(len(labels), bool) if iscrowd is None else _as_array(iscrowd, np.int64).astype(bool)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-areas, kind="stable")
    names = _names(class_names, labels)
    texts = [f"{names(label)}{' crowd' if c else ''}" for label, c in zip(labels, crowd)]
    return _draw(image, boxes, labels, texts, order, _palette(palette, labels, class_names))


def side_by_side(image: np.ndarray, gt_boxes, gt_labels, boxes, scores, labels,
                 class_names: Sequence[str] | None = None, score_threshold: float = 0.3, gt_iscrowd=None,
                 palette: np.ndarray | None = None, min_side: int = 384) -> np.ndarray:
    """Two panels of the same image: ground truth (left) and predictions scoring ``>= score_threshold`` (right).

    Titles ``ground truth (N boxes)`` and ``predictions >= 0.30 (K boxes)`` sit in a strip above the
    panels; :data:`PANEL_GAP` pixels separate them. An image whose longest side is under ``min_side``
    is enlarged by the smallest integer factor that reaches it (nearest neighbour, boxes scaled alike),
    so that titles and labels fit on small training inputs.

    Args:
        image: (H, W, 3) uint8.
        gt_boxes, gt_labels: ground truth, (N, 4) xyxy in ``image`` pixels and (N,) class indices.
        boxes, scores, labels: predictions, (K, 4) xyxy in ``image`` pixels, (K,) scores and class indices.
        class_names: name of each class index.
        score_threshold: predictions below it are neither drawn nor counted.
        gt_iscrowd: (N,) 0/1 crowd flags of the ground truth.
        palette: (C, 3) uint8 class colours (default :func:`~cbsa_dense.data.seg_labels.default_palette`).
        min_side: enlarge smaller images up to this longest side (0: never).

    Returns:
        (T + f*H, 2*f*W + PANEL_GAP, 3) uint8, with f the enlargement factor and T the title strip height.
    """
    factor = enlarge_factor(*image.shape[:2], min_side)
    if factor > 1:
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    gt_boxes = _as_array(gt_boxes, np.float64, (4,)) * factor
    boxes = _as_array(boxes, np.float64, (4,)) * factor
    scores = _as_array(scores, np.float64)
    all_labels = np.concatenate([_as_array(gt_labels, np.int64), _as_array(labels, np.int64)])
    palette = _palette(palette, all_labels, class_names)
    left = draw_ground_truth(image, gt_boxes, gt_labels, class_names, gt_iscrowd, palette)
    right = draw_detections(image, boxes, scores, labels, class_names, score_threshold, palette)
    kept = int((scores >= score_threshold).sum())
    titles = [f"ground truth ({len(gt_boxes)} box{'es' if len(gt_boxes) != 1 else ''})",
              f"predictions >= {score_threshold:.2f} ({kept} box{'es' if kept != 1 else ''})"]
    return titled_panels([left, right], titles)


def title_size(height: int, width: int) -> int:
    """Font size of panel titles (and of the segmentation pictures' legend strip): at least 14 px."""
    return max(14, font_size(height, width))


def enlarge_factor(height: int, width: int, min_side: int) -> int:
    """The smallest integer factor that brings the longest side to ``min_side`` or more (1: large enough)."""
    return max(1, math.ceil(min_side / max(height, width, 1))) if min_side else 1


def titled_panels(panels: Sequence[np.ndarray], titles: Sequence[str]) -> np.ndarray:
    """Panels of one size side by side, :data:`PANEL_GAP` pixels apart, each with its title in a strip above.

    Returns:
        (T + H, n*W + (n-1)*PANEL_GAP, 3) uint8, with T the title strip height.
    """
    ph, pw = panels[0].shape[:2]
    size = title_size(ph, pw)
    strip = size + 2 * max(2, size // 3)
    out = Image.new("RGB", (len(panels) * pw + (len(panels) - 1) * PANEL_GAP, strip + ph), TITLE_BACKGROUND)
    xs = [i * (pw + PANEL_GAP) for i in range(len(panels))]
    for x, panel in zip(xs, panels):
        out.paste(Image.fromarray(np.ascontiguousarray(panel, dtype=np.uint8)), (x, strip))
    draw = ImageDraw.Draw(out)
    font = _font(size)
    for x, title in zip(xs, titles):
        _, top, _, bottom = draw.textbbox((0, 0), title, font=font)
        draw.text((x + max(2, size // 3), (strip - (bottom - top)) // 2 - top), title, font=font, fill=(255, 255, 255))
    return np.asarray(out)


def _names(class_names: Sequence[str] | None, labels: np.ndarray):
    def name(label: int) -> str:
        if class_names is not None and 0 <= int(label) < len(class_names):
            return str(class_names[int(label)])
        return str(int(label))
    return name


def _palette(palette: np.ndarray | None, labels: np.ndarray, class_names: Sequence[str] | None) -> np.ndarray:
    if palette is not None:
        return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    count = max(len(class_names or ()), int(labels.max()) + 1 if len(labels) else 1)
    return default_palette(count)
