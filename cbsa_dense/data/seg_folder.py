"""Custom semantic-segmentation data from folders (or list files) of images and masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbsa_dense.data.seg_datamodule import SegDataModule
from cbsa_dense.data.seg_dataset import list_images, pair_by_stem
from cbsa_dense.data.seg_labels import (
    IGNORE_INDEX,
    LOSSY_MASK_SUFFIXES,
    check_lossless_mask,
    load_class_names,
)
from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD
from cbsa_dense.errors import ConfigError, DataError
from cbsa_dense.tasks.eval_protocol import Evaluation

#: ``root`` layout: split -> (images folder, masks folder) relative to ``root``; plus ``classes.txt``.
ROOT_LAYOUT = {"train": ("images/train", "masks/train"), "val": ("images/val", "masks/val"),
               "test": ("images/test", "masks/test")}
ROOT_CLASSES = "classes.txt"


def read_list_file(path: Path) -> list[tuple[Path, Path | None]]:
    """Pairs from a text file: ``image_path mask_path`` per line (relative paths are relative to the file).

    Blank lines and lines starting with ``#`` are skipped; a line with one path has no mask. Problems
    (missing file, lossy mask, malformed line) are a :class:`DataError` naming the file and line.
    """
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 2:
            raise DataError(f"{path}:{number}: expected 'image_path [mask_path]', got {line!r} (paths with "
                            f"spaces are not supported: rename them)")
        files = [Path(p) if Path(p).is_absolute() else path.parent / p for p in parts]
        for file in files:
            if not file.is_file():
                raise DataError(f"{path}:{number}: file {file} does not exist")
        if len(files) > 1 and files[1].suffix.lower() in LOSSY_MASK_SUFFIXES:
            try:
                check_lossless_mask(files[1])
            except DataError as err:
                raise DataError(f"{path}:{number}: {err}") from None
        pairs.append((files[0], files[1] if len(files) > 1 else None))
    if not pairs:
        raise DataError(f"list file {path} names no images")
    return pairs


class SegFolderDataModule(SegDataModule):
    """Your own data: one ``root`` folder in the standard layout, or per split a folder of images plus a
    folder of masks matched by file stem, or a list file of ``image mask`` path pairs.

    Standard layout under ``root``::

        root/images/train/*.jpg   root/masks/train/*.png
        root/images/val/*.jpg     root/masks/val/*.png
        root/images/test/...      root/masks/test/...      (optional; without it, test uses val)
        root/classes.txt          (one class name per line)

    Explicit ``train_images``, ``val_masks``, ``class_names``, ... override the corresponding part of the
    layout. Masks are single-channel index PNGs (class k stored as k, or as k + 1 with
    ``reduce_zero_label``), or RGB PNGs whose colours are given by ``mask_palette``; lossy formats (JPEG,
    WebP) are refused. Images may have any, differing sizes. Every image needs a mask and every mask an
    image (a :class:`~cbsa_dense.errors.DataError` names the files) unless ``skip_unpaired`` is set.

    Args:
        root: folder in the layout above; ``None``: give the split folders explicitly.
        train_images: folder of training images, or a ``.txt`` list file of ``image mask`` pairs
            (default with ``root``: ``root/images/train``).
        train_masks: folder of training masks (``<stem><mask_suffix>``); unused with a list file
            (default with ``root``: ``root/masks/train``).
        val_images: like ``train_images``, for validation (``root/images/val``).
        val_masks: like ``train_masks``, for validation (``root/masks/val``).
        test_images: like ``train_images`` for test; ``None``: ``root/images/test`` when it exists, else
            the validation split.
        test_masks: like ``train_masks``, for test.
        class_names: list of names, or a text file with one name per line; defines ``num_classes``
            (default with ``root``: ``root/classes.txt``).
        mask_palette: RGB colour of each class when masks are colour images (other colours: ignored).
        mask_suffix: suffix of mask files in mask folders (lossless: ``.png``, ``.bmp``, ``.tif``).
        reduce_zero_label: annotation 0 is "unlabelled" (ignored) and class k is stored as k + 1.
        ignore_index: annotation value of unlabelled pixels.
        skip_unpaired: skip images without a mask and masks without an image (counts and names are
            logged) instead of failing.
        **kwargs: the remaining :class:`~cbsa_dense.data.seg_datamodule.SegDataModule` arguments.
    """

    def __init__(self, train_images: str | None = None, val_images: str | None = None,
                 class_names: list[str] | str | None = None,
                 train_masks: str | None = None, val_masks: str | None = None, test_images: str | None = None,
                 test_masks: str | None = None, mask_palette: list[list[int]] | None = None,
                 mask_suffix: str = ".png", reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX,
                 palette: list[list[int]] | None = None, batch_size: int = 8, val_batch_size: int = 1,
                 num_workers: int = 4, crop_size: tuple[int, int] = (512, 512),
                 scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, photometric: bool = True,
                 evaluation: Evaluation | None = None,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 validate_labels: bool = True, predict_images: str | None = None, root: str | None = None,
                 skip_unpaired: bool = False, global_batch_size: int | None = None,
                 class_balanced_crops: float = 0.0) -> None:
        layout = self._root_layout(root)
        train_images = train_images or layout.get("train_images")
        val_images = val_images or layout.get("val_images")
        train_masks = train_masks or layout.get("train_masks")
        val_masks = val_masks or layout.get("val_masks")
        if not test_images and layout.get("test_images") and Path(layout["test_images"]).is_dir():
            test_images, test_masks = layout["test_images"], test_masks or layout["test_masks"]
        if class_names is None:
            class_names = layout.get("class_names")
        missing = [name for name, value in (("train_images", train_images), ("val_images", val_images),
                                            ("class_names", class_names)) if not value]
        if missing:
            raise ConfigError(f"SegFolderDataModule needs {' and '.join(missing)}: give root (a folder with "
                              f"images/{{train,val}}, masks/{{train,val}}, {ROOT_CLASSES}) or set them explicitly")
        if Path(mask_suffix).suffix.lower() in LOSSY_MASK_SUFFIXES or mask_suffix.lower() in LOSSY_MASK_SUFFIXES:
            raise ConfigError(f"mask_suffix={mask_suffix!r} is a lossy format: lossy compression invents label "
                              f"values at region edges; save masks as PNG and use mask_suffix '.png'")
        names = load_class_names(class_names)
        if palette is None and mask_palette is not None:
            palette = mask_palette
        super().__init__(num_classes=len(names), class_names=names, palette=palette,
                         reduce_zero_label=reduce_zero_label, ignore_index=ignore_index, batch_size=batch_size,
                         val_batch_size=val_batch_size, num_workers=num_workers, crop_size=crop_size, scale=scale,
                         ratio_range=ratio_range, cat_max_ratio=cat_max_ratio, photometric=photometric,
                         evaluation=evaluation, mean=mean, std=std, validate_labels=validate_labels,
                         predict_images=predict_images, global_batch_size=global_batch_size,
                         class_balanced_crops=class_balanced_crops)
        self.save_hyperparameters(ignore=["evaluation"])          # the task stores the protocol
        if mask_palette is not None:
            self.mask_palette = np.asarray(mask_palette, dtype=np.int64)
            if self.mask_palette.shape != (self.num_classes, 3):
                raise ConfigError(f"mask_palette must be {self.num_classes} RGB triplets (one per class), got "
                                  f"shape {self.mask_palette.shape}")
        self.root = Path(root) if root else None
        self.splits = {"train": (train_images, train_masks), "val": (val_images, val_masks),
                       "test": (test_images, test_masks) if test_images else (val_images, val_masks)}
        self.mask_suffix = mask_suffix
        self.skip_unpaired = skip_unpaired

    @staticmethod
    def _root_layout(root: str | None) -> dict[str, str]:
        """Default paths of the standard layout under ``root`` (empty without a root)."""
        if not root:
            return {}
        base = Path(root)
        if not base.is_dir():
            state = "is a file, not a folder" if base.exists() else "does not exist"
            raise DataError(f"root={root}: folder {base} {state} (expected images/{{train,val}}, "
                            f"masks/{{train,val}} and {ROOT_CLASSES} in it)")
        layout = {"class_names": str(base / ROOT_CLASSES)}
        for split, (images, masks) in ROOT_LAYOUT.items():
            layout[f"{split}_images"], layout[f"{split}_masks"] = str(base / images), str(base / masks)
        return layout

    def split_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        images, masks = self.splits[split]
        path = Path(images)
        if path.is_file():
            pairs = read_list_file(path)
            missing = [image for image, mask in pairs if mask is None]
            if missing:
                raise DataError(f"{split} list file {path} has {len(missing)} image(s) without a mask: "
                                f"{', '.join(str(m) for m in missing[:3])}; give 'image_path mask_path' per line")
            return pairs
        if masks is None:
            raise ConfigError(f"{split}_images={images} is a folder: give {split}_masks too")
        for kind, folder in (("image", path), ("mask", Path(masks))):
            if not folder.is_dir():
                where = f" (root={self.root} layout: images/<split>, masks/<split>)" if self.root else ""
                raise DataError(f"{split} {kind} folder {folder} does not exist{where}: check the path")
        return pair_by_stem(list_images(path), Path(masks), self.mask_suffix, skip_unpaired=self.skip_unpaired,
                            skip_flag="skip_unpaired")
