"""Reading, validating and converting semantic-segmentation label maps.

Internally every mask is an int64 array of class indices in ``[0, num_classes)`` with
:data:`IGNORE_INDEX` (255) for unlabelled pixels, whatever the dataset's own convention (``reduce_zero_label``,
another ignore value, RGB palette masks); :func:`to_annotation` converts predictions back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

#: The ignore value used inside the package (padding, reduced zero label, dataset ignore values).
IGNORE_INDEX = 255


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for ``num_classes`` classes (PASCAL-VOC style bit interleaving), (C, 3) uint8.

    Index 0 is not black so that class 0 stays visible in overlays.
    """
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        label, r, g, b = c + 1, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[c] = (r, g, b)
    return palette


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """MMSegmentation's ``reduce_zero_label``: 0 -> ignore, k -> k - 1, 255 stays ignore."""
    mask = mask.astype(np.int64)
    out = mask - 1
    out[(mask == 0) | (mask == IGNORE_INDEX)] = IGNORE_INDEX
    return out


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) image; raises ``ValueError`` naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def read_mask(path: str | Path, num_classes: int, reduce_zero: bool = False, ignore_index: int = IGNORE_INDEX,
              palette: np.ndarray | None = None) -> np.ndarray:
    """Read one annotation PNG into the internal convention (int64, classes ``[0, C)``, 255 = ignore).

    Args:
        path: the mask file (index PNG, or RGB PNG when ``palette`` is given).
        num_classes: number of classes C after any reduction.
        reduce_zero: apply :func:`reduce_zero_label` (ADE20K: 0 = "other" is ignored).
        ignore_index: the dataset's own ignore value (mapped to 255); applied before the reduction.
        palette: (C, 3) colours of RGB masks: a pixel of colour ``palette[k]`` is class ``k``, any other
            colour is ignored.

    Raises:
        ValueError: unreadable file, or a value that is neither a class nor ignored (names the file, the
            value and the valid range).
    """
    try:
        with Image.open(path) as img:
            if palette is not None:
                rgb = np.asarray(img.convert("RGB")).astype(np.int64)
                code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
                pal = np.asarray(palette, dtype=np.int64)
                keys = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
                order = np.argsort(keys)
                pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
                hit = keys[order][pos] == code
                return np.where(hit, order[pos], IGNORE_INDEX).astype(np.int64)
            if img.mode not in ("L", "P", "I", "I;16", "1"):
                raise ValueError(f"expected a single-channel index PNG, got mode {img.mode}")
            mask = np.asarray(img).astype(np.int64)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from err
    if ignore_index != IGNORE_INDEX:
        ignored = mask == ignore_index
        mask = np.where(mask == IGNORE_INDEX, -1, mask)
        mask[ignored] = IGNORE_INDEX
    if reduce_zero:
        mask = reduce_zero_label(mask)
    bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = np.unique(mask[bad] + (1 if reduce_zero else 0))
        unreduced = not reduce_zero and values.max() == num_classes and (mask == 0).any()
        hint = ("; 0..C labels look un-reduced (0 = 'other', as in ADE20K): set reduce_zero_label=True"
                if unreduced else "; the file is corrupt or num_classes is wrong")
        raise ValueError(f"mask {path} has values {values[:10].tolist()} outside the {num_classes} classes "
                         f"(valid: 0..{num_classes - (0 if reduce_zero else 1)}"
                         f"{', 0 = ignored (reduce_zero_label)' if reduce_zero else ''}, ignore {ignore_index})"
                         f"{hint}")
    return mask


def to_annotation(pred: np.ndarray, reduce_zero: bool = False) -> np.ndarray:
    """Class indices -> the dataset's annotation values (``k + 1`` for ``reduce_zero_label`` data)."""
    return pred.astype(np.int64) + (1 if reduce_zero else 0)


def write_label_png(path: str | Path, values: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a label map: palette-mode PNG (values as indices) when they fit in uint8, else 16-bit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if values.max(initial=0) < 256:
        img = Image.fromarray(values.astype(np.uint8), mode="L")
        if palette is not None:
            img = img.convert("P")
            img.putpalette(np.asarray(palette, dtype=np.uint8)[:256].reshape(-1).tolist())
        img.save(path)
    else:
        Image.fromarray(values.astype(np.uint16)).save(path)


def colorize(pred: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours (ignored / out-of-range pixels black)."""
    palette = np.asarray(palette, dtype=np.uint8)
    out = np.zeros((*pred.shape, 3), dtype=np.uint8)
    valid = (pred >= 0) & (pred < len(palette))
    out[valid] = palette[pred[valid]]
    return out


def overlay(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourized prediction over the RGB image, (H, W, 3) uint8."""
    color = colorize(pred, palette).astype(np.float32)
    return (image.astype(np.float32) * (1.0 - alpha) + color * alpha).round().clip(0, 255).astype(np.uint8)


def load_class_names(names: Sequence[str] | str | Path) -> list[str]:
    """Class names from a list, or from a text file with one name per line (blank lines skipped)."""
    if isinstance(names, (str, Path)):
        path = Path(names)
        if not path.is_file():
            raise ValueError(f"class-names file {path} does not exist")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [str(n) for n in names]
