"""Collect images for explanation and put them in the model's input convention (reading: ``read_image``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cbsa_dense.data.seg_dataset import IMAGE_SUFFIXES
from cbsa_dense.errors import DataError


def list_images(sources: list[str]) -> list[Path]:
    """Expand files and directories (non-recursive, sorted) into image paths.

    Raises:
        DataError: a source does not exist, or nothing image-like was found.
    """
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError(f"--images {path} does not exist: give image files or folders of images")
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, sources))}: give image files "
                        "or folders that hold some")
    return paths


def unit_mean_std(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalization constants as (3, 1, 1) float tensors in [0, 1] pixel units (given in [0, 1] or [0, 255])."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    if mean.max() > 1.0 or std.max() > 1.0:
        mean, std = mean / 255.0, std / 255.0
    return mean, std


def to_model_input(image: np.ndarray, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float, normalized; mean/std given in [0, 1] or [0, 255] units."""
    mean, std = unit_mean_std(mean, std)
    x = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0)
    return ((x - mean) / std)[None]
