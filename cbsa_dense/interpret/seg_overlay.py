"""Segmentation pictures people can read: class colours over the photo, the background left as it is, and a
legend of class names and colours.

Pure functions on uint8 (H, W, 3) arrays (PIL ``ImageDraw``; no matplotlib). The legend's text size follows
the image (:func:`~cbsa_dense.interpret.det_overlay.font_size`), as the detection pictures' labels do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from cbsa_dense.interpret.det_overlay import _font, _text_colour, font_size

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
    skip = set(background_classes(class_names, background))
    painted = (labels >= 0) & (labels < len(palette)) & ~np.isin(labels, sorted(skip))
    out = image.astype(np.float32)
    out[painted] = out[painted] * (1.0 - alpha) + palette[labels[painted]].astype(np.float32) * alpha
    out = out.round().clip(0, 255).astype(np.uint8)
    if not legend:
        return out
    present, counts = np.unique(labels[painted], return_counts=True)
    order = present[np.argsort(-counts, kind="stable")]
    return draw_legend(out, [(str(class_names[i]), palette[i]) for i in order])
