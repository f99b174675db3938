"""A semantic-segmentation dataset over (image, mask) file pairs, and its collate function."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cbsa_dense.data.seg_labels import (
    IGNORE_INDEX,
    LOSSY_MASK_SUFFIXES,
    read_image,
    read_mask,
    stored_orientation,
)
from cbsa_dense.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SegDataset(Dataset):
    """(image, mask) pairs read from disk, converted to the internal label convention, then transformed.

    Args:
        samples: (image path, mask path or ``None``) pairs; ``None`` masks (plain image folders) give
            samples without ``mask``.
        transform: ``transform(image, mask) -> {"image": (3, h, w) float32, "mask": ...}``.
        num_classes: number of classes after any reduction.
        reduce_zero_label: annotation 0 is ignored and k becomes k - 1.
        ignore_index: the dataset's own ignore value.
        mask_palette: (C, 3) colours when masks are RGB images.

    A sample is a dict: ``image`` (3, h, w) float32 tensor, ``mask`` (H', W') int64 tensor (train: crop;
    eval: ORIGINAL size), ``path`` (image file), ``orig_size`` (H, W) of the original image.
    """

    def __init__(self, samples: Sequence[tuple[Path, Path | None]], transform: Callable, num_classes: int,
                 reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX,
                 mask_palette: np.ndarray | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.mask_palette = mask_palette

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, path: Path) -> np.ndarray:
        return read_mask(path, self.num_classes, self.reduce_zero_label, self.ignore_index, self.mask_palette)

    def __getitem__(self, index: int) -> dict:
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = self.load_mask(mask_path) if mask_path is not None else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(size_mismatch_message(image_path, image.shape[:2], mask_path, mask.shape))
        out = self.transform(image, mask)
        sample = {"image": torch.from_numpy(out["image"]), "path": str(image_path),
                  "orig_size": tuple(image.shape[:2])}
        if mask is not None:
            sample["mask"] = torch.from_numpy(out["mask"])
        return sample


def size_mismatch_message(image_path: Path, image_hw: tuple[int, int], mask_path: Path,
                          mask_hw: tuple[int, int]) -> str:
    """One line naming both files and sizes; says when the image's EXIF orientation explains the mismatch."""
    text = (f"mask {mask_path} is {mask_hw[1]}x{mask_hw[0]} (WxH) but image {image_path} is "
            f"{image_hw[1]}x{image_hw[0]}")
    orientation = stored_orientation(image_path)
    if orientation in (5, 6, 7, 8) and tuple(mask_hw) == tuple(image_hw)[::-1]:
        return (f"{text} as displayed (its EXIF orientation {orientation} turns the stored "
                f"{image_hw[0]}x{image_hw[1]} pixels); the mask matches the stored, unrotated pixels: save the "
                f"mask in the orientation the image is displayed in (as annotation tools show it)")
    return f"{text}; every mask must have its image's size (re-export the mask or fix the pairing)"


def seg_collate(batch: list[dict]) -> dict:
    """Stack ``image``/``mask`` when all samples have the same size, else keep lists (eval at any size)."""
    out = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder (sorted; suffixes in :data:`IMAGE_SUFFIXES`); DataError naming the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"image folder {folder} is a file, not a folder: give the folder that holds the images")
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist: check the path")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"image folder {folder} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _names(paths: Sequence[Path], limit: int = 3) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def pair_by_stem(images: Sequence[Path], mask_dir: Path, mask_suffix: str = ".png",
                 skip_unpaired: bool = False, skip_flag: str | None = None) -> list[tuple[Path, Path]]:
    """Match each image to ``mask_dir/<stem><mask_suffix>`` (suffix compared case-insensitively).

    An image without a mask, or a mask file without an image, is a :class:`DataError` naming the files;
    with ``skip_unpaired`` they are skipped and the counts and names are logged (a warning); ``skip_flag``
    is the name of the caller's setting for it, suggested in the error. Two images
    with the same stem (``a.jpg`` and ``a.png``) are always an error: the mask would be ambiguous.
    """
    mask_dir = Path(mask_dir)
    if mask_dir.exists() and not mask_dir.is_dir():
        raise DataError(f"mask folder {mask_dir} is a file, not a folder: give the folder that holds the masks")
    if not mask_dir.is_dir():
        raise DataError(f"mask folder {mask_dir} does not exist: check the path")
    by_stem: dict[str, Path] = {}
    for image in images:
        if image.stem in by_stem:
            raise DataError(f"images {by_stem[image.stem]} and {image} have the same stem {image.stem!r}, so "
                            f"they would share the mask {mask_dir / (image.stem + mask_suffix)}: rename or "
                            f"remove one")
        by_stem[image.stem] = image
    suffix = mask_suffix.lower()
    masks: dict[str, Path] = {}
    others: dict[str, Path] = {}
    for file in sorted(mask_dir.iterdir()):
        if file.name.startswith(".") or not file.is_file():
            continue
        if file.name.lower().endswith(suffix):
            masks[file.name[:len(file.name) - len(suffix)]] = file
        else:
            others.setdefault(file.stem, file)
    no_mask = [image for stem, image in by_stem.items() if stem not in masks]
    no_image = [mask for stem, mask in masks.items() if stem not in by_stem]
    folder = images[0].parent if images else mask_dir
    if (no_mask or no_image) and not skip_unpaired:
        if no_mask:
            first = no_mask[0]
            text = f"image {first} has no mask {mask_dir / (first.stem + mask_suffix)}"
            other = others.get(first.stem)
            if other is not None:
                text += (f" (found {other.name}: " + ("masks must be lossless PNGs, lossy compression invents "
                                                      "labels at edges)" if other.suffix.lower() in
                                                      LOSSY_MASK_SUFFIXES else "set mask_suffix to match)"))
            if len(no_mask) > 1:
                text += f" (and {len(no_mask) - 1} more images without a mask: {_names(no_mask[1:])})"
        else:
            text = f"mask {no_image[0]} has no image <stem>.* in {folder}"
            if len(no_image) > 1:
                text += f" (and {len(no_image) - 1} more masks without an image: {_names(no_image[1:])})"
        hint = f", or set {skip_flag}=true to skip them (logged)" if skip_flag else ""
        raise DataError(f"{text}; add the missing files or remove the extra ones{hint}")
    if no_mask or no_image:
        log.warning("skip_unpaired: skipping %d image(s) without a mask in %s (%s) and %d mask(s) without an image "
                    "in %s (%s)", len(no_mask), mask_dir, _names(no_mask) or "-", len(no_image), folder,
                    _names(no_image) or "-")
    pairs = [(image, masks[stem]) for stem, image in by_stem.items() if stem in masks]
    if not pairs:
        raise DataError(f"no image in {folder} has a mask <stem>{mask_suffix} in {mask_dir}")
    return pairs
