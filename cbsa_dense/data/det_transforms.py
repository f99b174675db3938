"""albumentations pipelines for detection: large-scale jitter (training), longest-side resize + pad (eval).

Both normalize first and pad with zeros afterwards (ViTDet pads normalized images with 0), to a fixed
``image_size`` square, so a global-attention encoder sees the same token layout in training and
evaluation. Boxes are xyxy pixels (``pascal_voc``); instance masks follow their boxes through an index
field (albumentations does not drop masks with filtered boxes; protocols.md). Reseed the pipeline per
DataLoader worker with :func:`cbsa_dense.data.seeding.seed_worker`.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.geometric import functional as fgeometric

from cbsa_dense.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _RandomScale(A.RandomScale):
    """``A.RandomScale`` that keeps every side at least one pixel (albumentations truncates a 1-pixel side
    scaled by < 1 to 0, and OpenCV then fails on very thin images such as 8000x10)."""

    @staticmethod
    def _resize(img: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
        height, width = img.shape[:2]
        return fgeometric.resize(img, (max(1, int(height * scale)), max(1, int(width * scale))), interpolation)

    def apply(self, img: np.ndarray, scale: float, **params) -> np.ndarray:
        interpolation = self.interpolation
        if self.area_for_downscale in ("image", "image_mask") and scale < 1.0:
            interpolation = cv2.INTER_AREA
        return self._resize(img, scale, interpolation)

    def apply_to_mask(self, mask: np.ndarray, scale: float, **params) -> np.ndarray:
        interpolation = self.mask_interpolation
        if self.area_for_downscale == "image_mask" and scale < 1.0:
            interpolation = cv2.INTER_AREA
        return self._resize(mask, scale, interpolation)


class DetectionTransform:
    """Callable ``(image, boxes, labels, masks) -> dict`` over an albumentations pipeline.

    Args:
        image_size: side of the square the image is padded (and in training cropped) to.
        train: large-scale jitter (resize the longest side to ``image_size * U(scale_range)``, random
            ``image_size`` crop, horizontal flip) instead of the eval resize.
        scale_range: jitter range of the training scale (ViTDet: 0.1 - 2.0).
        hflip: probability of a horizontal flip in training.
        min_box_size: boxes narrower or lower than this (pixels, after augmentation) are dropped.
        mean: per-channel mean of [0, 1] pixels.
        std: per-channel std of [0, 1] pixels.
        native: no resize to ``image_size``: training scales the original image by ``U(scale_range)`` and crops
            ``image_size`` from it (objects keep their pixel size, give or take the jitter: the data's
            ``train_mode: native``); evaluation keeps the original size, without square padding, ``scale``
            (1, 1) (evaluation ``mode`` ``native`` and ``tiled``).
        native_scale: with ``native``, the images are first scaled by this (2.0: objects twice their pixel size
            in the photo, for objects only a few patches wide); ``scale`` then reports it.

    Returns (call): ``image`` (3, S, S) float32, ``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64,
    ``masks`` list of (S, S) uint8, ``scale`` (y, x) input pixels per original pixel (eval; the resize
    rounds each side, so the two differ slightly; training returns (1, 1)) and ``image_size`` (h, w) of the unpadded content.
    """

    def __init__(self, image_size: int, train: bool, scale_range: tuple[float, float] = (0.1, 2.0),
                 hflip: float = 0.5, min_box_size: float = 1.0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, native: bool = False, native_scale: float = 1.0) -> None:
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"data scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.image_size = int(image_size)
        self.train = train
        self.native = native and not train          # evaluation at the original size (no pipeline geometry)
        self.native_scale = float(native_scale) if native else 1.0
        geometry: list = [] if native and train else [A.LongestMaxSize(max_size=self.image_size)]
        if train:
            s = self.native_scale
            geometry += [_RandomScale(scale_limit=(lo * s - 1.0, hi * s - 1.0), p=1.0),
                         A.PadIfNeeded(self.image_size, self.image_size, position="top_left", fill=0, fill_mask=0),
                         A.RandomCrop(self.image_size, self.image_size),
                         A.HorizontalFlip(p=hflip)]
        self.normalize = A.Compose([A.Normalize(mean=tuple(mean), std=tuple(std))])
        self.pipeline = A.Compose(
            [A.Normalize(mean=tuple(mean), std=tuple(std)), *geometry],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "indices"], clip=True,
                                     filter_invalid_bboxes=True, min_width=min_box_size, min_height=min_box_size))

    def set_random_seed(self, seed: int) -> None:
        """Reseed the albumentations pipeline (used by :func:`cbsa_dense.data.seeding.seed_worker`)."""
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, masks: list[np.ndarray]) -> dict:
        h, w = image.shape[:2]
        if self.native:                      # original pixels (x native_scale), normalized; collate and detector pad
            img = self.normalize(image=image)["image"]
            sy = sx = 1.0
            if self.native_scale != 1.0:
                img = _RandomScale._resize(img, self.native_scale,
                                           cv2.INTER_AREA if self.native_scale < 1 else cv2.INTER_LINEAR)
                sy, sx = img.shape[0] / h, img.shape[1] / w
            return {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1).contiguous(),
                    "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32),
                    "labels": np.asarray(labels, dtype=np.int64).reshape(-1),
                    "masks": [np.asarray(m if sy == 1.0 else _RandomScale._resize(np.asarray(m), self.native_scale,
                                                                                 cv2.INTER_NEAREST), dtype=np.uint8)
                              for m in masks], "scale": (sy, sx),
                    "image_size": tuple(img.shape[:2])}
        args = {"image": image, "bboxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
                "labels": np.asarray(labels, dtype=np.int64), "indices": np.arange(len(boxes), dtype=np.int64)}
        if masks:
            args["masks"] = list(masks)
        out = self.pipeline(**args)
        img = out["image"]
        content = img.shape[:2]
        size = self.image_size
        padded = np.zeros((size, size, img.shape[2]), dtype=np.float32)
        padded[:min(content[0], size), :min(content[1], size)] = img[:size, :size]
        keep = np.asarray(out["indices"], dtype=np.int64)
        kept_masks = []
        if masks:
            for i in keep:
                m = np.zeros((size, size), dtype=np.uint8)
                src = np.asarray(out["masks"][i])
                m[:min(src.shape[0], size), :min(src.shape[1], size)] = src[:size, :size]
                kept_masks.append(m)
        return {
            "image": torch.from_numpy(padded).permute(2, 0, 1).contiguous(),
            "boxes": np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(out["labels"], dtype=np.int64).reshape(-1),
            "masks": kept_masks,
            "scale": (1.0, 1.0) if self.train else (content[0] / h, content[1] / w),
            "image_size": (size, size) if self.train else (min(content[0], size), min(content[1], size)),
        }
