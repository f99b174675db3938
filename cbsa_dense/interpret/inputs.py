"""Read images for explanation and put them in the model's input convention."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(sources: list[str]) -> list[Path]:
    """Expand files and directories (non-recursive, sorted) into image paths.

    Raises:
        FileNotFoundError: a source does not exist, or nothing image-like was found.
    """
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            paths += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"image source not found: {path}")
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {sources}")
    return paths


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; a corrupt or truncated file raises ``ValueError`` naming it."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def to_model_input(image: np.ndarray, mean, std) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float, normalized; mean/std given in [0, 1] or [0, 255] units."""
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    if mean.max() > 1.0 or std.max() > 1.0:
        mean, std = mean / 255.0, std / 255.0
    x = image.transpose(2, 0, 1).astype(np.float32) / 255.0
    return torch.from_numpy((x - mean) / std)[None]
