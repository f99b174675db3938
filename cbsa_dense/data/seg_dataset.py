"""A semantic-segmentation dataset over (image, mask) file pairs, and its collate function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cbsa_dense.data.seg_labels import IGNORE_INDEX, read_image, read_mask

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
            raise ValueError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but image {image_path} "
                             f"is {image.shape[1]}x{image.shape[0]}")
        out = self.transform(image, mask)
        sample = {"image": torch.from_numpy(out["image"]), "path": str(image_path),
                  "orig_size": tuple(image.shape[:2])}
        if mask is not None:
            sample["mask"] = torch.from_numpy(out["mask"])
        return sample


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
    """Image files of a folder (sorted; suffixes in :data:`IMAGE_SUFFIXES`); error naming the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def pair_by_stem(images: Sequence[Path], mask_dir: Path, mask_suffix: str = ".png") -> list[tuple[Path, Path]]:
    """Match each image to ``mask_dir/<stem><mask_suffix>``; error naming the first image without a mask."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise ValueError(f"mask folder {mask_dir} does not exist")
    pairs = []
    for image in images:
        mask = mask_dir / f"{image.stem}{mask_suffix}"
        if not mask.is_file():
            raise ValueError(f"image {image} has no mask {mask}")
        pairs.append((image, mask))
    return pairs
