"""A small learnable segmentation dataset generated on first use, in the ADE20K layout.

Scenes of a sky (smooth gradient) over a ground (noisy texture) with a few textured shapes on top:
discs (stripes), boxes (checkerboard), triangles (flat), rings (speckled). Annotations follow ADE20K's
convention: 0 = unlabelled (the 1-2 px boundaries between regions), k = class k, read with
``reduce_zero_label`` so the real ADE20K code path runs. Images are non-square (96 x 128 by default).
Generation is deterministic (one seeded NumPy generator per image) and takes a few seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbsa_dense.data.ade20k import ADE20KDataModule
from cbsa_dense.errors import ConfigError
from cbsa_dense.tasks.eval_protocol import Evaluation, SegEvaluation

DEMO_CLASSES = ("sky", "ground", "disc", "box", "triangle", "ring")
_VERSION = 1


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float,
                rng: np.random.Generator) -> np.ndarray:
    if kind == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    if kind == "box":
        ry, rx = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    if kind == "triangle":  # apex up: inside when below the two slanted edges and above the base
        return (yy <= cy + r * 0.8) & (yy - (cy - r) >= 1.6 * np.abs(xx - cx))
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2  # ring
    return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)


def _texture(kind: str, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float colours of one region kind in [0, 255]."""
    h, w = yy.shape
    base = rng.uniform(40, 215, size=3)
    if kind == "sky":
        top, bottom = np.array([70, 120, 210]) + rng.uniform(-30, 30, 3), np.array([190, 215, 245])
        t = (yy / h)[..., None]
        return top * (1 - t) + bottom * t
    if kind == "ground":
        color = np.array([110, 90, 50]) + rng.uniform(-30, 30, 3)
        return color + rng.normal(0, 28, size=(h, w, 1))
    if kind == "disc":
        period = rng.uniform(5, 7)
        stripes = (np.sin(2 * np.pi * yy / period) > 0)[..., None]
        return np.where(stripes, base, 255 - base)
    if kind == "box":
        cell = int(rng.integers(4, 6))
        checker = (((yy // cell) + (xx // cell)) % 2 == 0)[..., None]
        return np.where(checker, base, base * 0.35)
    if kind == "triangle":
        return np.broadcast_to(base, (h, w, 3)) + rng.normal(0, 4, size=(h, w, 1))
    speckle = rng.random((h, w, 1)) < 0.3  # ring
    return np.where(speckle, 255.0, base * 0.6)


def render_scene(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: RGB uint8 (H, W, 3) and annotation uint8 (H, W) (0 = boundary, 1..6 = classes)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    horizon = height * rng.uniform(0.3, 0.6) + height * 0.08 * np.sin(xx / width * 2 * np.pi * rng.uniform(0.5, 2)
                                                                      + rng.uniform(0, 6.3))
    label = np.where(yy < horizon, 1, 2).astype(np.uint8)
    image = np.where((label == 1)[..., None], _texture("sky", yy, xx, rng), _texture("ground", yy, xx, rng))
    for _ in range(int(rng.integers(2, 5))):
        cls = int(rng.integers(3, 7))
        kind = DEMO_CLASSES[cls - 1]
        r = rng.uniform(0.14, 0.3) * height
        cy, cx = rng.uniform(0.15 * height, 0.85 * height), rng.uniform(0.1 * width, 0.9 * width)
        mask = _shape_mask(kind, yy, xx, cy, cx, r, rng)
        image = np.where(mask[..., None], _texture(kind, yy, xx, rng), image)
        label[mask] = cls
    boundary = np.zeros_like(label, dtype=bool)
    boundary[:-1] |= label[:-1] != label[1:]
    boundary[1:] |= label[:-1] != label[1:]
    boundary[:, :-1] |= label[:, :-1] != label[:, 1:]
    boundary[:, 1:] |= label[:, :-1] != label[:, 1:]
    label[boundary] = 0
    return np.clip(image, 0, 255).astype(np.uint8), label


def generate_demo_ade20k(root: str | Path, num_train: int = 320, num_val: int = 64,
                         image_size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """Write the demo dataset under ``root`` in the ADE20K layout, unless it is already there.

    ``root/images/{training,validation}/demo_*.jpg`` and ``root/annotations/{...}/demo_*.png``; a
    ``demo.json`` records the parameters, and a different request regenerates the folder.

    Returns:
        ``root``.
    """
    root = Path(root)
    params = {"version": _VERSION, "num_train": num_train, "num_val": num_val,
              "image_size": list(image_size), "seed": seed}
    stamp = root / "demo.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, count, offset in (("training", num_train, 0), ("validation", num_val, 1_000_000)):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            rng = np.random.default_rng([seed, offset + i])
            image, label = render_scene(*image_size, rng)
            Image.fromarray(image).save(tmp / "images" / split / f"demo_{i:05d}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(tmp / "annotations" / split / f"demo_{i:05d}.png")
    (tmp / "demo.json").write_text(json.dumps(params))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


class DemoSegDataModule(ADE20KDataModule):
    """The generated demo data through :class:`~cbsa_dense.data.ade20k.ADE20KDataModule`.

    Args:
        root: where the data is generated (once; reused while the parameters match).
        num_train: training images.
        num_val: validation images (also the test split).
        image_size: (height, width) of the generated images.
        seed: generation seed.
        num_threads: torch intra-op CPU threads of the process, set at setup (``None``: torch's default,
            one per core). On CPUs shared with other jobs, 1 avoids oversubscription stalls: measured on
            the project's shared 2-core machine, 0.23 s per demo step with 1 thread vs 3.1 s with 2.
        **kwargs: :class:`~cbsa_dense.data.ade20k.ADE20KDataModule` arguments (crop, scales, loaders).
        evaluation: the task's protocol, linked here by the CLI; ``None``: the images at their own size, whole.
    """

    #: the generated images are small: evaluated at their own size
    default_evaluation = SegEvaluation(scale=None)

    def __init__(self, root: str = "data_cache/demo_ade20k", num_train: int = 320, num_val: int = 64,
                 image_size: tuple[int, int] = (96, 128), seed: int = 0, batch_size: int = 16,
                 val_batch_size: int = 16, num_workers: int = 0, crop_size: tuple[int, int] = (96, 96),
                 scale: tuple[int, int] = (256, 96), ratio_range: tuple[float, float] = (0.75, 1.5),
                 cat_max_ratio: float = 0.75, photometric: bool = True,
                 evaluation: Evaluation | None = None,
                 mean: tuple[float, float, float] = (0.5, 0.5, 0.5), std: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 validate_labels: bool = True, predict_images: str | None = None,
                 num_threads: int | None = None, global_batch_size: int | None = None) -> None:
        if num_threads is not None and num_threads < 1:
            raise ConfigError(f"num_threads={num_threads!r} is invalid: give an integer >= 1, or null")
        super().__init__(root=root, num_classes=len(DEMO_CLASSES), class_names=list(DEMO_CLASSES),
                         batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers,
                         crop_size=crop_size, scale=scale, ratio_range=ratio_range, cat_max_ratio=cat_max_ratio,
                         photometric=photometric, evaluation=evaluation, mean=mean, std=std,
                         validate_labels=validate_labels, predict_images=predict_images,
                         global_batch_size=global_batch_size)
        self.save_hyperparameters(ignore=["evaluation"])          # the task stores the protocol
        self.num_threads = num_threads
        self.generation = {"num_train": num_train, "num_val": num_val, "image_size": tuple(image_size),
                           "seed": seed}

    def prepare_data(self) -> None:
        generate_demo_ade20k(self.root, **self.generation)

    def setup(self, stage: str | None = None) -> None:
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        generate_demo_ade20k(self.root, **self.generation)
        super().setup(stage)
