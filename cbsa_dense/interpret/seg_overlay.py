"""Segmentation pictures people can read: class colours over the photo, the background left as it is, and a
legend of class names and colours; ground truth beside prediction (:func:`ground_truth_and_prediction`).

Pure functions on uint8 (H, W, 3) arrays (PIL ``ImageDraw``; no matplotlib). The legend's text size follows
the image (:func:`~cbsa_dense.interpret.det_overlay.font_size`), as the detection pictures' labels do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from cbsa_dense.interpret.det_overlay import (
    TITLE_BACKGROUND,
    _font,
    _text_colour,
    enlarge_factor,
    font_size,
    title_size,
    titled_panels,
)

#: Class names (lower case) that :func:`draw_segmentation` leaves unpainted unless told otherwise.
BACKGROUND_NAMES = ("background", "bg", "other", "others", "unlabeled", "unlabelled", "void")


def background_classes(class_names: Sequence[str], background: Sequence[str] | None = None) -> list[int]:
    """Indices of the classes to leave unpainted: those named in ``background`` (ConfigError-free: unknown
    names are ignored), default those named like a background (:data:`BACKGROUND_NAMES`)."""
    wanted = {n.lower() for n in (BACKGROUND_NAMES if background is None else background)}
    return [i for i, name in enumerate(class_names) if str(name).lower() in wanted]


def draw_legend(image: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """``image`` with a legend in its top-left corner: one row per ``(name, colour)``, a colour swatch and
    the name on a dark strip. Returns a new array; no entries, no legend."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if not entries:
        return image.copy()
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    size = font_size(*image.shape[:2])
    font = _font(size)
    pad, swatch = max(2, size // 4), size
    widths = [draw.textbbox((0, 0), name, font=font)[2] for name, _ in entries]
    box_w = pad * 3 + swatch + max(widths)
    box_h = pad + len(entries) * (size + pad)
    draw.rectangle((0, 0, box_w, box_h), fill=(32, 32, 32))
    for row, (name, colour) in enumerate(entries):
        y = pad + row * (size + pad)
        colour = tuple(int(c) for c in colour)
        draw.rectangle((pad, y, pad + swatch, y + size), fill=colour, outline=_text_colour(colour))
        draw.text((2 * pad + swatch, y), name, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def draw_segmentation(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], palette: np.ndarray,
                      alpha: float = 0.5, background: Sequence[str] | None = None, legend: bool = True) -> np.ndarray:
    """Class colours blended over ``image`` where the class is not a background class, plus a legend of the
    painted classes present (largest area first).

    Args:
        image: (H, W, 3) uint8.
        labels: (H, W) class indices (values outside the classes are left unpainted).
        class_names: one name per class.
        palette: (C, 3) uint8 class colours.
        alpha: opacity of the colours, in [0, 1].
        background: names of classes left unpainted (default: :data:`BACKGROUND_NAMES`; ``[]`` paints all).
        legend: draw the legend.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
    palette = np.asarray(palette, dtype=np.uint8)
    painted = painted_pixels(labels, class_names, palette, background)
    out = image.astype(np.float32)
    out[painted] = out[painted] * (1.0 - alpha) + palette[labels[painted]].astype(np.float32) * alpha
    out = out.round().clip(0, 255).astype(np.uint8)
    if not legend:
        return out
    return draw_legend(out, legend_entries([labels[painted]], class_names, palette))


def painted_pixels(labels: np.ndarray, class_names: Sequence[str], palette: np.ndarray,
                   background: Sequence[str] | None = None) -> np.ndarray:
    """(H, W) bool: the pixels :func:`draw_segmentation` paints, those of a class with a colour that is not a
    background class (ignored pixels, e.g. 255, and background classes stay as the photo)."""
    labels = np.asarray(labels)
    skip = sorted(background_classes(class_names, background))
    return (labels >= 0) & (labels < len(palette)) & ~np.isin(labels, skip)


def legend_entries(painted_labels: Sequence[np.ndarray], class_names: Sequence[str],
                   palette: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``(name, colour)`` of each class present in the painted labels (of one or more maps), largest area first."""
    values = np.concatenate([np.asarray(v).reshape(-1) for v in painted_labels]) if painted_labels else np.zeros(0)
    present, counts = np.unique(values.astype(np.int64), return_counts=True)
    order = present[np.argsort(-counts, kind="stable")]
    names = [str(class_names[i]) if i < len(class_names) else f"class_{i}" for i in order]
    return [(name, np.asarray(palette, dtype=np.uint8)[i]) for name, i in zip(names, order)]


def legend_strip(entries: Sequence[tuple[str, Sequence[int]]], width: int, size: int) -> np.ndarray:
    """A dark strip ``width`` pixels wide with the legend entries (colour swatch and name) in rows, left to
    right, wrapping onto as many rows as needed; (0, width, 3) when there are none."""
    if not entries:
        return np.zeros((0, width, 3), np.uint8)
    font = _font(size)
    pad = max(3, size // 3)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cells, x, row = [], pad, 0
    for name, colour in entries:
        cell = size + pad + measure.textbbox((0, 0), name, font=font)[2]
        if x > pad and x + cell > width - pad:
            x, row = pad, row + 1
        cells.append((x, row, name, tuple(int(c) for c in colour)))
        x += cell + 2 * pad
    line = size + pad
    strip = Image.new("RGB", (width, pad + (row + 1) * line), TITLE_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for x, r, name, colour in cells:
        y = pad + r * line
        draw.rectangle((x, y, x + size, y + size - 1), fill=colour, outline=_text_colour(colour))
        _, top, _, bottom = draw.textbbox((0, 0), name, font=font)
        draw.text((x + size + pad, y + (size - (bottom - top)) // 2 - top), name, font=font, fill=(255, 255, 255))
    return np.asarray(strip)


def enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    """``array`` repeated ``factor`` times along its first two axes (nearest-neighbour enlargement)."""
    return array if factor == 1 else np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


def ground_truth_and_prediction(image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray,
                                class_names: Sequence[str], palette: np.ndarray, alpha: float = 0.5,
                                background: Sequence[str] | None = None, min_side: int = 512) -> np.ndarray:
    """Two panels of the photo with class colours: ``ground truth`` (left) and ``prediction`` (right), titled
    in a strip above, with one legend below of the painted classes present in either (largest area first).

    An image whose longest side is under ``min_side`` is enlarged by the smallest integer factor that
    reaches it (nearest neighbour, labels alike), so titles and legend stay legible on small inputs.
    Ground-truth pixels outside the classes (ignored, e.g. 255 for ``reduce_zero_label`` data) and
    background classes are left as the photo.

    Args:
        image: (H, W, 3) uint8.
        gt: (H, W) ground-truth class indices, or ``None``: the prediction panel alone.
        pred: (H, W) predicted class indices.
        class_names: one name per class.
        palette: (C, 3) uint8 class colours.
        alpha: opacity of the colours.
        background: classes left unpainted (as :func:`draw_segmentation`).
        min_side: enlarge smaller images up to this longest side (0: never).

    Returns:
        (T + f*H + L, n*f*W + (n-1)*PANEL_GAP, 3) uint8: f the enlargement factor, n the panels (2, or 1
        without ``gt``), T the title strip and L the legend strip heights.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    maps = [np.asarray(pred)] if gt is None else [np.asarray(gt), np.asarray(pred)]
    for labels in maps:
        if labels.shape != image.shape[:2]:
            raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
    factor = enlarge_factor(*image.shape[:2], min_side)
    image = enlarge(image, factor)
    maps = [enlarge(labels, factor) for labels in maps]
    palette = np.asarray(palette, dtype=np.uint8)
    panels = [draw_segmentation(image, labels, class_names, palette, alpha, background, legend=False)
              for labels in maps]
    titles = ["prediction"] if gt is None else ["ground truth", "prediction"]
    picture = titled_panels(panels, titles)
    painted = [labels[painted_pixels(labels, class_names, palette, background)] for labels in maps]
    strip = legend_strip(legend_entries(painted, class_names, palette), picture.shape[1],
                         title_size(*image.shape[:2]))
    return np.concatenate([picture, strip], axis=0)
