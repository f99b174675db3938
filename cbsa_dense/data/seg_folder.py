"""Custom semantic-segmentation data from folders (or list files) of images and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbsa_dense.data.seg_datamodule import SegDataModule
from cbsa_dense.data.seg_dataset import list_images, pair_by_stem
from cbsa_dense.data.seg_labels import IGNORE_INDEX, load_class_names
from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD


def read_list_file(path: Path) -> list[tuple[Path, Path | None]]:
    """Pairs from a text file: ``image_path mask_path`` per line (relative paths are relative to the file).

    Blank lines and lines starting with ``#`` are skipped; a line with one path has no mask.
    """
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 2:
            raise ValueError(f"{path}:{number}: expected 'image_path [mask_path]', got {line!r}")
        files = [Path(p) if Path(p).is_absolute() else path.parent / p for p in parts]
        for file in files:
            if not file.is_file():
                raise ValueError(f"{path}:{number}: file {file} does not exist")
        pairs.append((files[0], files[1] if len(files) > 1 else None))
    if not pairs:
        raise ValueError(f"list file {path} names no images")
    return pairs


class SegFolderDataModule(SegDataModule):
    """Your own data: per split, a folder of images plus a folder of masks matched by file stem, or a
    list file of ``image mask`` path pairs.

    Masks are single-channel index PNGs (class k stored as k, or as k + 1 with ``reduce_zero_label``),
    or RGB PNGs whose colours are given by ``mask_palette``. Images may have any, differing sizes.

    Args:
        train_images: folder of training images, or a ``.txt`` list file of ``image mask`` pairs.
        train_masks: folder of training masks (``<stem><mask_suffix>``); unused with a list file.
        val_images: like ``train_images``, for validation.
        val_masks: like ``train_masks``, for validation.
        test_images: like ``train_images`` for test; ``None`` tests on the validation split.
        test_masks: like ``train_masks``, for test.
        class_names: list of names, or a text file with one name per line; defines ``num_classes``.
        mask_palette: RGB colour of each class when masks are colour images (other colours: ignored).
        mask_suffix: suffix of mask files in mask folders.
        reduce_zero_label: annotation 0 is "unlabelled" (ignored) and class k is stored as k + 1.
        ignore_index: annotation value of unlabelled pixels.
        **kwargs: the remaining :class:`~cbsa_dense.data.seg_datamodule.SegDataModule` arguments.
    """

    def __init__(self, train_images: str, val_images: str, class_names: list[str] | str,
                 train_masks: str | None = None, val_masks: str | None = None, test_images: str | None = None,
                 test_masks: str | None = None, mask_palette: list[list[int]] | None = None,
                 mask_suffix: str = ".png", reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX,
                 palette: list[list[int]] | None = None, batch_size: int = 8, val_batch_size: int = 1,
                 num_workers: int = 4, crop_size: tuple[int, int] = (512, 512),
                 scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, photometric: bool = True,
                 eval_scale: tuple[int, int] | None = (2048, 512),
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 validate_labels: bool = True, predict_images: str | None = None) -> None:
        names = load_class_names(class_names)
        if palette is None and mask_palette is not None:
            palette = mask_palette
        super().__init__(num_classes=len(names), class_names=names, palette=palette,
                         reduce_zero_label=reduce_zero_label, ignore_index=ignore_index, batch_size=batch_size,
                         val_batch_size=val_batch_size, num_workers=num_workers, crop_size=crop_size, scale=scale,
                         ratio_range=ratio_range, cat_max_ratio=cat_max_ratio, photometric=photometric,
                         eval_scale=eval_scale, mean=mean, std=std, validate_labels=validate_labels,
                         predict_images=predict_images)
        self.save_hyperparameters()
        if mask_palette is not None:
            self.mask_palette = np.asarray(mask_palette, dtype=np.int64)
            if self.mask_palette.shape != (self.num_classes, 3):
                raise ValueError(f"mask_palette must be {self.num_classes} RGB triplets (one per class), got "
                                 f"shape {self.mask_palette.shape}")
        self.splits = {"train": (train_images, train_masks), "val": (val_images, val_masks),
                       "test": (test_images, test_masks) if test_images else (val_images, val_masks)}
        self.mask_suffix = mask_suffix

    def split_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        images, masks = self.splits[split]
        path = Path(images)
        if path.is_file():
            pairs = read_list_file(path)
            missing = [str(image) for image, mask in pairs if mask is None]
            if missing:
                raise ValueError(f"{split} list file {path} has images without masks: {missing[:3]}")
            return pairs
        if masks is None:
            raise ValueError(f"{split}_images={images} is a folder: give {split}_masks too")
        return pair_by_stem(list_images(path), Path(masks), self.mask_suffix)
