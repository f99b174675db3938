"""MMSegmentation's semantic-segmentation pipelines on top of albumentations.

Train (mmseg/Segmenter ADE20K recipe): ratio-range resize keeping the aspect ratio, random crop with
``cat_max_ratio`` (up to 10 tries until no class covers more than that fraction of the non-ignored
crop; albumentations has no such transform), horizontal flip, photometric distortion, normalization,
padding of the image with 0 and of the mask with 255 to the crop size. Eval: keep-ratio resize to the
eval scale and normalization; the mask stays at its original size (scores are computed there).

Each pipeline owns its RNG and exposes ``set_random_seed`` so that :func:`cbsa_dense.data.seeding.seed_worker`
gives every DataLoader worker its own augmentation stream.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from cbsa_dense.data.seg_labels import IGNORE_INDEX
from cbsa_dense.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv ``rescale`` keeping the ratio: fit (long, short) inside ``scale = (max_long, max_short)``.

    Returns the new (height, width).
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    # A very thin image (e.g. 8000 x 10 at a small scale) would round its short side to 0 pixels, which
    # cv2.resize rejects: keep at least one pixel (the crop is then padded as for any small image).
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _size_pair(name: str, value, kind: str) -> tuple[int, int]:
    """Two positive integers, or a :class:`ConfigError` naming the setting and the value."""
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0
                                 for v in pair):
        raise ConfigError(f"{name}={value!r} is invalid: give two positive integers ({kind})")
    return int(pair[0]), int(pair[1])


def check_ratio_range(value, name: str = "ratio_range") -> tuple[float, float]:
    """``(low, high)`` with ``0 < low <= high``, or a :class:`ConfigError` naming the setting."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is invalid: give two numbers (low, high)") from None
    if not (0 < low <= high and np.isfinite(high)):
        raise ConfigError(f"{name}={value!r} is invalid: need 0 < low <= high (e.g. [0.5, 2.0]; "
                          f"[1.0, 1.0] disables the random scaling)")
    return low, high


def check_normalization(mean, std) -> None:
    """Three finite means and three positive stds, or a :class:`ConfigError`."""
    for name, value in (("mean", mean), ("std", std)):
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            values = []
        if len(values) != 3 or not all(np.isfinite(values)) or (name == "std" and min(values) <= 0):
            raise ConfigError(f"{name}={value!r} is invalid: give three finite numbers (R, G, B)"
                              + (", all positive" if name == "std" else ""))


def to_chw_float(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


class SegTrainTransform:
    """Train pipeline; call with ``image`` (H, W, 3) uint8 and ``mask`` (H, W) int64 (255 = ignore).

    Args:
        crop_size: (height, width) of the training crop.
        scale: (long, short) base scale of the ratio-range resize (mmseg ADE20K: (2048, 512)).
        ratio_range: range of the random factor applied to ``scale``.
        cat_max_ratio: max fraction of one class in the crop (retried up to 10 times); 1.0 disables it.
        class_balanced_crops: the fraction of crops centred on a pixel of one class, drawn uniformly among the
            classes in the resized image (then clipped into it; ``cat_max_ratio`` does not apply to them): a class
            on a few percent of the pixels, at an image border, is then in as many crops as any other. 0 (the
            default) leaves every crop to ``cat_max_ratio``'s random crop.
        flip_prob: horizontal flip probability.
        photometric: apply mmseg-like photometric distortion (brightness, contrast, saturation, hue,
            each with probability 0.5).
        mean: per-channel mean of images scaled to [0, 1].
        std: per-channel std of images scaled to [0, 1].

    Returns (from ``__call__``):
        ``{"image": (3, crop_h, crop_w) float32, "mask": (crop_h, crop_w) int64}``.
    """

    def __init__(self, crop_size: tuple[int, int] = (512, 512), scale: tuple[int, int] = (2048, 512),
                 ratio_range: tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                 flip_prob: float = 0.5, photometric: bool = True,
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD, class_balanced_crops: float = 0.0) -> None:
        self.crop_size = _size_pair("crop_size", crop_size, "height, width of the training crop")
        self.scale = _size_pair("scale", scale, "long, short side of the training resize")
        self.ratio_range = check_ratio_range(ratio_range)
        if not 0 < cat_max_ratio <= 1:
            raise ConfigError(f"cat_max_ratio={cat_max_ratio!r} is invalid: give a fraction in (0, 1] "
                              f"(1.0 disables the check)")
        if not 0 <= flip_prob <= 1:
            raise ConfigError(f"flip_prob={flip_prob!r} is invalid: give a probability in [0, 1]")
        if isinstance(class_balanced_crops, bool) or not 0 <= class_balanced_crops <= 1:
            raise ConfigError(f"class_balanced_crops={class_balanced_crops!r} is invalid: give a fraction in [0, 1] "
                              "(0 disables it)")
        check_normalization(mean, std)
        self.cat_max_ratio = cat_max_ratio
        self.class_balanced_crops = float(class_balanced_crops)
        steps = [A.HorizontalFlip(p=flip_prob)]
        if photometric:
            steps += [
                A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0.0, p=0.5),
                A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.5, p=0.5),
                A.ColorJitter(brightness=0.0, contrast=0.0, saturation=0.5, hue=0.0, p=0.5),
                A.HueSaturationValue(hue_shift_limit=18, sat_shift_limit=0, val_shift_limit=0, p=0.5),
            ]
        steps += [
            A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
            A.PadIfNeeded(min_height=self.crop_size[0], min_width=self.crop_size[1],
                          position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
        ]
        self.albu = A.Compose(steps)
        self.set_random_seed(0)

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.albu.set_random_seed(seed)

    def class_centred_box(self, mask: np.ndarray) -> tuple[int, int, int, int] | None:
        """A crop (y0, y1, x0, x1) centred on a random pixel of a class drawn uniformly among the mask's classes
        (clipped into the image); ``None`` when the mask has no labelled pixel."""
        classes = np.unique(mask)
        classes = classes[classes != IGNORE_INDEX]
        if len(classes) == 0:
            return None
        ys, xs = np.nonzero(mask == classes[int(self.rng.integers(len(classes)))])
        pick = int(self.rng.integers(len(ys)))
        (ch, cw), (h, w) = self.crop_size, mask.shape
        y0 = min(max(int(ys[pick]) - ch // 2, 0), max(h - ch, 0))
        x0 = min(max(int(xs[pick]) - cw // 2, 0), max(w - cw, 0))
        return y0, min(y0 + ch, h), x0, min(x0 + cw, w)

    def random_crop_box(self, mask: np.ndarray) -> tuple[int, int, int, int]:
        """mmseg ``RandomCrop`` with ``cat_max_ratio`` (or, for ``class_balanced_crops`` of the crops, a crop
        centred on a class drawn uniformly): (y0, y1, x0, x1) of the crop."""
        if self.class_balanced_crops and self.rng.random() < self.class_balanced_crops:
            box = self.class_centred_box(mask)
            if box is not None:
                return box
        ch, cw = self.crop_size
        h, w = mask.shape
        box = (0, 0, 0, 0)
        for _ in range(10):
            y0 = int(self.rng.integers(0, max(h - ch, 0) + 1))
            x0 = int(self.rng.integers(0, max(w - cw, 0) + 1))
            box = (y0, min(y0 + ch, h), x0, min(x0 + cw, w))
            if self.cat_max_ratio >= 1.0:
                break
            labels, counts = np.unique(mask[box[0]:box[1], box[2]:box[3]], return_counts=True)
            counts = counts[labels != IGNORE_INDEX]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return box

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        ratio = self.rng.uniform(*self.ratio_range)
        target = (max(1, int(self.scale[0] * ratio)), max(1, int(self.scale[1] * ratio)))
        nh, nw = rescale_size(*image.shape[:2], target)
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
        y0, y1, x0, x1 = self.random_crop_box(mask)
        out = self.albu(image=np.ascontiguousarray(image[y0:y1, x0:x1]),
                        mask=np.ascontiguousarray(mask[y0:y1, x0:x1]))
        return {"image": to_chw_float(out["image"]), "mask": out["mask"].astype(np.int64)}


class SegEvalTransform:
    """Eval pipeline: keep-ratio resize of the image to ``scale`` and normalization; mask untouched.

    Args:
        scale: (long, short) scale (mmseg ADE20K: (2048, 512) = short side 512 unless the long side
            would exceed 2048); ``None`` keeps the original size.
        mean: per-channel mean of images scaled to [0, 1].
        std: per-channel std of images scaled to [0, 1].
    """

    def __init__(self, scale: tuple[int, int] | None = (2048, 512),
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD) -> None:
        self.scale = (_size_pair("evaluation scale", scale, "long, short side of the evaluation resize; or null")
                      if scale is not None else None)
        check_normalization(mean, std)
        self.normalize = A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0)])

    def set_random_seed(self, seed: int) -> None:
        self.normalize.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self.scale is not None:
            nh, nw = rescale_size(*image.shape[:2], self.scale)
            if (nh, nw) != image.shape[:2]:
                image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        out = {"image": to_chw_float(self.normalize(image=image)["image"])}
        if mask is not None:
            out["mask"] = mask.astype(np.int64)
        return out
