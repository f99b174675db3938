"""Reading, validating and converting semantic-segmentation label maps.

Internally every mask is an int64 array of class indices in ``[0, num_classes)`` with
:data:`IGNORE_INDEX` (255) for unlabelled pixels, whatever the dataset's own convention (``reduce_zero_label``,
another ignore value, RGB palette masks); :func:`to_annotation` converts predictions back.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cbsa_dense.errors import DataError

#: The ignore value used inside the package (padding, reduced zero label, dataset ignore values).
IGNORE_INDEX = 255


def default_palette(num_classes: int) -> np.ndarray:
    """Distinct colours for ``num_classes`` classes (PASCAL-VOC style bit interleaving), (C, 3) uint8.

    Index 0 is not black so that class 0 stays visible in overlays. The package's one generated palette:
    segmentation label PNGs and overlays, detection boxes (:mod:`cbsa_dense.interpret.det_overlay`) and
    explain pictures use it.
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


#: EXIF ``Orientation`` value -> the PIL transposition that shows the stored pixels as a viewer does
#: (the table of ``PIL.ImageOps.exif_transpose``; 1 and unknown values: as stored).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

#: Mask file suffixes that are refused: lossy compression invents values at region edges.
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".webp")
_LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")

#: Single-channel mask modes read as class indices.
_INDEX_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")

# ``warnings.catch_warnings`` swaps process-global state: serialize our own uses of it (mask
# validation reads files from several threads).
_OPEN_LOCK = threading.Lock()


def _open(path: str | Path, what: str) -> Image.Image:
    """``Image.open`` that refuses decompression-bomb sized headers with a :class:`DataError`.

    PIL warns above ``Image.MAX_IMAGE_PIXELS`` pixels and raises above twice that; both are refused here
    (a genuine image that large is far beyond any training scale and should be downscaled first).
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        pixels = found.group(1) if found else "too many"
        raise DataError(f"{what} {path} declares {pixels} pixels, above the decompression-bomb limit of "
                        f"{Image.MAX_IMAGE_PIXELS} pixels (PIL.Image.MAX_IMAGE_PIXELS): refusing to decode it; "
                        f"downscale the file (or remove it)") from err
    except FileNotFoundError as err:
        raise DataError(f"{what} {path} does not exist: check the path") from err
    except IsADirectoryError as err:
        raise DataError(f"{what} {path} is a folder, not an image: give an image file") from err
    except PermissionError as err:
        raise DataError(f"cannot read {what} {path}: permission denied: make the file readable") from err
    except (OSError, ValueError, SyntaxError) as err:
        if Path(path).is_dir():                        # some systems refuse a folder without IsADirectoryError
            raise DataError(f"{what} {path} is a folder, not an image: give an image file") from err
        raise DataError(f"cannot read {what} {path}: {err} (the file is corrupt or not an image: replace or "
                        f"remove it)") from err


def exif_orientation(img: Image.Image) -> int:
    """The EXIF ``Orientation`` (1..8) of an opened image; 1 when absent or unreadable (viewers then
    show the stored pixels too)."""
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF blocks raise many kinds of errors; viewers ignore them
        return 1
    return value if value in _EXIF_TRANSPOSE else 1


def stored_orientation(path: str | Path) -> int:
    """The EXIF ``Orientation`` of an image file (1 when absent, unreadable or not an image)."""
    try:
        with Image.open(path) as img:
            return exif_orientation(img)
    except Exception:  # noqa: BLE001 - only used to explain another error
        return 1


def _displayed(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it: its EXIF orientation applied (``PIL.ImageOps.exif_transpose``)."""
    method = _EXIF_TRANSPOSE.get(exif_orientation(img))
    return img.transpose(method) if method is not None else img


def _to_uint8(img: Image.Image, path: str | Path) -> np.ndarray:
    """Single-channel 16-bit / 32-bit / float pixels -> uint8 by the rule documented in :func:`read_image`."""
    values = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        finite = np.isfinite(values)
        if not finite.all():
            raise DataError(f"image {path} ({img.mode} mode) has {int((~finite).sum())} NaN/inf pixels: "
                            f"replace them with finite values or remove the file")
        vmin, vmax = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if img.mode == "I" and vmin >= 0 and vmax <= 65535:
            low, high = 0.0, 65535.0                   # 16-bit data in a 32-bit container
        elif img.mode == "F" and vmin >= 0 and vmax <= 1:
            low, high = 0.0, 1.0                       # float intensities in [0, 1]
        else:
            low, high = vmin, vmax                     # no range defined by the type: the image's own
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.rint(scaled).clip(0, 255).astype(np.uint8)


def read_image(path: str | Path | Image.Image) -> np.ndarray:
    """Read an image as a viewer shows it: RGB uint8 (H, W, 3). The one image reader of the package.

    ``path`` may also be an opened PIL image (converted the same way; it is left open).

    - EXIF ``Orientation`` is applied (as ``PIL.ImageOps.exif_transpose`` does), so a phone photo stored
      sideways comes out upright, as its annotation was drawn.
    - 8-bit modes go through PIL's conversion: grayscale replicated, palette expanded, CMYK / YCbCr
      converted, alpha dropped (the stored colours are kept; nothing is composited, as in mmcv and
      torchvision). 16-bit-per-channel RGB PNGs are read by PIL at 8 bits (their high byte).
    - Single-channel high-bit-depth images are scaled to 0..255, never clipped:
      16-bit modes (``I;16``, ``I;16B``, ...) by the dtype's range, ``v * 255 / 65535``; 32-bit integers
      (``I``) the same when all values are within 0..65535, and ``F`` (float) by ``v * 255`` when all
      values are within [0, 1]. Only data outside those ranges (negative, wider, or other floats),
      for which no range is defined, is stretched by the image's own min..max (a constant image gives 0).
      Why the dtype's range and not each image's min..max: it is what viewers show and what PIL itself
      does for 16-bit RGB, and it keeps brightness comparable across the images of a dataset (a
      per-image stretch would brighten dark images and amplify the noise of flat ones, differently in
      each image).

    Raises:
        DataError: the file does not exist, is a folder, or cannot be decoded (corrupt, truncated, not an
            image), its header declares more pixels than PIL's decompression-bomb limit, or its float
            pixels are NaN/inf; the message names the file.
    """
    given = isinstance(path, Image.Image)
    img = path if given else _open(path, "image")
    if given:
        path = f"<PIL image {img.mode} {img.width}x{img.height}>"
    try:
        with contextlib.nullcontext(img) if given else img:
            img = _displayed(img)
            if img.mode in ("I", "F") or img.mode.startswith("I;16"):
                gray = _to_uint8(img, path)
                return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
            return np.array(img.convert("RGB"), dtype=np.uint8)     # a writable copy
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err} (the file is corrupt or truncated: replace or "
                        f"remove it)") from err


def check_lossless_mask(path: str | Path) -> None:
    """Refuse a mask path whose suffix is a lossy format (:data:`LOSSY_MASK_SUFFIXES`) with a DataError."""
    suffix = Path(path).suffix.lower()
    if suffix in LOSSY_MASK_SUFFIXES:
        raise DataError(f"mask {path} is a {suffix} file: lossy compression invents label values at region "
                        f"edges, so it cannot hold class indices; save masks as PNG (lossless)")


def read_label_map(path: str | Path, rgb: bool = False, what: str = "mask") -> np.ndarray:
    """The raw values of a label map file, int64 (H, W) (``rgb``: (H, W, 3) colours), as a viewer shows it.

    The reader of every mask / label map (training masks, ``score seg`` ground truth, zero-shot masks):
    lossy formats are refused (by suffix and by content), the file's own EXIF orientation is applied
    (a transposition: values stay exact), and single-channel index modes are required unless ``rgb``.

    Raises:
        DataError: unreadable, lossy, or (without ``rgb``) not a single-channel image; names the file.
    """
    check_lossless_mask(path)
    img = _open(path, what)
    try:
        with img:
            if img.format in _LOSSY_FORMATS:
                raise DataError(f"{what} {path} is a {img.format} file (whatever its name): lossy compression "
                                f"invents label values at region edges; save masks as PNG (lossless)")
            img = _displayed(img)
            if rgb:
                return np.asarray(img.convert("RGB")).astype(np.int64)
            if img.mode not in _INDEX_MODES:
                raise DataError(f"cannot read {what} {path}: expected a single-channel index PNG, got mode "
                                f"{img.mode}; save class indices as a grayscale/palette PNG"
                                + (", or give mask_palette for colour masks" if what == "mask" else ""))
            return np.asarray(img).astype(np.int64)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read {what} {path}: {err} (the file is corrupt or truncated: replace or "
                        f"remove it)") from err


def read_mask(path: str | Path, num_classes: int, reduce_zero: bool = False, ignore_index: int = IGNORE_INDEX,
              palette: np.ndarray | None = None) -> np.ndarray:
    """Read one annotation PNG into the internal convention (int64, classes ``[0, C)``, 255 = ignore).

    The mask's own EXIF orientation, if it has one (PNG ``eXIf``), is applied as for images, so image
    and mask are both compared in the orientation a viewer shows; transposing keeps the values exact.

    Args:
        path: the mask file (index PNG, or RGB PNG when ``palette`` is given); lossy formats (JPEG,
            WebP) are refused.
        num_classes: number of classes C after any reduction.
        reduce_zero: apply :func:`reduce_zero_label` (ADE20K: 0 = "other" is ignored).
        ignore_index: the dataset's own ignore value (mapped to 255); applied before the reduction.
        palette: (C, 3) colours of RGB masks: a pixel of colour ``palette[k]`` is class ``k``, any other
            colour is ignored.

    Raises:
        DataError: unreadable or lossy file, or a value that is neither a class nor ignored (names the
            file, the value and the valid range).
    """
    if palette is None:
        mask = read_label_map(path)
    else:
        rgb = read_label_map(path, rgb=True)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        pal = np.asarray(palette, dtype=np.int64)
        keys = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
        order = np.argsort(keys)
        pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
        hit = keys[order][pos] == code
        return np.where(hit, order[pos], IGNORE_INDEX).astype(np.int64)
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
        raise DataError(f"mask {path} has values {values[:10].tolist()} outside the {num_classes} classes "
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
            raise DataError(f"class-names file {path} does not exist: give a text file with one class name "
                            f"per line, or a list of names")
        try:
            text = path.read_text(encoding="utf-8-sig")        # a BOM (Windows editors) is not part of a name
        except UnicodeDecodeError as err:
            raise DataError(f"class-names file {path} is not UTF-8 text ({err.reason} at byte {err.start}): write one "
                            f"class name per line, saved as UTF-8") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise DataError(f"class-names file {path} names no classes: write one class name per line")
        check_unique_names(names, f"class-names file {path}")
        return names
    names = [str(n) for n in names]
    check_unique_names(names, "class_names")
    return names


def check_unique_names(names: Sequence[str], where: str) -> None:
    """DataError naming the first class name given twice (per-class metrics and outputs are keyed by name)."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise DataError(f"{where} names class {name!r} twice (classes {seen[name]} and {index}): per-class "
                            f"metrics are keyed by name; give each class a distinct name")
        seen[name] = index
