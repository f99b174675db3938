"""A small synthetic detection dataset in COCO format, generated deterministically on first use.

Shapes of three classes (circle, square, triangle; sparse category ids 2, 5, 9) in random colors on
textured backgrounds (color gradient, stripes, noise). Circles carry compressed-RLE masks, squares and
triangles polygons. Each split has one image with a crowd region (a cluster of small dots, ``iscrowd``
1, uncompressed RLE) and one image without objects; image ids are sparse. Same seed, same bytes.

Layout under ``root``: ``train/*.png``, ``val/*.png``, ``annotations/instances_{train,val}.json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from cbsa_dense.data.coco_datamodule import COCODetectionDataModule
from cbsa_dense.errors import ConfigError
from cbsa_dense.tasks.eval_protocol import Evaluation

CATEGORIES = [{"id": 2, "name": "circle"}, {"id": 5, "name": "square"}, {"id": 9, "name": "triangle"}]
#: Bumped when the generator changes, so a stale cache is regenerated.
GENERATOR_VERSION = 1


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = (xx * np.cos(a := rng.uniform(0, np.pi)) + yy * np.sin(a)) / max(h, w)
    img = c0 + (c1 - c0) * t[..., None] * 0.8
    period, angle = rng.uniform(6, 20), rng.uniform(0, np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img += rng.uniform(8, 30) * stripes[..., None]
    img += rng.normal(0, 10, (h, w, 3))
    return img


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int, size: float, cx: float, cy: float):
    """Return (uint8 mask, polygon or None) of one shape."""
    if kind == "circle":
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= (size / 2) ** 2).astype(np.uint8)
        return mask, None
    angle = rng.uniform(-0.3, 0.3)
    if kind == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        radius = size / 2
    else:
        corners = [(0, -1.15), (1, 0.75), (-1, 0.75)]
        radius = size / 2
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = (np.array(corners, dtype=np.float64) * radius) @ rot.T + [cx, cy]
    poly = [float(round(v, 2)) for v in pts.reshape(-1)]
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts.round(2)], fill=1)
    return np.asarray(canvas, dtype=np.uint8), poly


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _make_split(out: Path, split: str, num_images: int, rng: np.random.Generator, size_range: tuple[int, int],
                image_id0: int, ann_id0: int) -> tuple[dict, int]:
    (out / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    ann_id = ann_id0
    kinds = [c["name"] for c in CATEGORIES]
    ids = {c["name"]: c["id"] for c in CATEGORIES}
    for i in range(num_images):
        h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        image_id = image_id0 + 7 * i
        img = _background(rng, h, w)
        occupied = np.zeros((h, w), bool)
        n_objects = 0 if i == 1 else int(rng.integers(1, 5))
        for _ in range(n_objects):
            for _attempt in range(20):
                kind = kinds[int(rng.integers(0, 3))]
                size = rng.uniform(0.14, 0.38) * min(h, w)
                cx, cy = rng.uniform(size / 2 + 1, w - size / 2 - 1), rng.uniform(size / 2 + 1, h - size / 2 - 1)
                mask, poly = _shape_mask(rng, kind, h, w, size, cx, cy)
                if mask.sum() > 8 and (mask.astype(bool) & occupied).sum() < 0.1 * mask.sum():
                    break
            else:
                continue
            m = mask.astype(bool) & ~occupied
            occupied |= mask.astype(bool)
            color = rng.uniform(0, 255, 3)
            img[m] = color + rng.normal(0, 6, (int(m.sum()), 3))
            visible = m.astype(np.uint8)
            if kind == "circle" or visible.sum() < mask.sum():
                rle = mask_utils.encode(np.asfortranarray(visible))
                segm = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            else:
                segm = [poly]
            anns.append({"id": ann_id, "image_id": image_id, "category_id": ids[kind], "bbox": _bbox(visible),
                         "area": float(visible.sum()), "segmentation": segm, "iscrowd": 0})
            ann_id += 1
        if i == 0:  # crowd: a cluster of small dots in a corner
            crowd = np.zeros((h, w), np.uint8)
            yy, xx = np.mgrid[0:h, 0:w]
            for _ in range(6):
                dx, dy = rng.uniform(2, 0.25 * w), rng.uniform(2, 0.25 * h)
                crowd |= ((xx - dx) ** 2 + (yy - dy) ** 2 <= 4).astype(np.uint8)
            crowd &= ~occupied
            img[crowd.astype(bool)] = rng.uniform(0, 255, 3)
            counts, run, value = [], 0, 0
            for v in crowd.reshape(-1, order="F"):  # uncompressed RLE, as COCO stores crowd regions
                if v != value:
                    counts.append(run)
                    run, value = 0, v
                run += 1
            counts.append(run)
            anns.append({"id": ann_id, "image_id": image_id, "category_id": ids["circle"], "bbox": _bbox(crowd),
                         "area": float(crowd.sum()), "segmentation": {"size": [h, w], "counts": counts},
                         "iscrowd": 1})
            ann_id += 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(out / split / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
    return {"images": images, "annotations": anns, "categories": CATEGORIES,
            "info": {"description": f"cbsa_dense synthetic demo, generator v{GENERATOR_VERSION}"}}, ann_id


def generate_demo_coco(root: str | Path, num_train: int = 320, num_val: int = 64,
                       size_range: tuple[int, int] = (112, 160), seed: int = 0) -> Path:
    """Write the demo dataset under ``root`` unless an identical one is already there.

    Args:
        root: output directory (``train/``, ``val/``, ``annotations/``).
        num_train: training images (at least 2: one holds the crowd region, one is empty).
        num_val: validation images (at least 2).
        size_range: inclusive range of image heights and widths, pixels.
        seed: generator seed; the same arguments give the same files.

    Returns:
        ``root`` as a Path.
    """
    if num_train < 2 or num_val < 2:
        raise ConfigError(f"demo data num_train and num_val must be >= 2, got {num_train} and {num_val}")
    root = Path(root)
    stamp = {"version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
             "size_range": list(size_range), "seed": seed}
    marker = root / "demo.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo_coco_", dir=root.parent))
    try:
        rng = np.random.default_rng(seed)
        (tmp / "annotations").mkdir()
        next_ann = 1
        for split, n, id0 in (("train", num_train, 1001), ("val", num_val, 5003)):
            data, next_ann = _make_split(tmp, split, n, rng, size_range, id0, next_ann)
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        (tmp / "demo.json").write_text(json.dumps(stamp))
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


class DemoDetectionDataModule(COCODetectionDataModule):
    """:class:`COCODetectionDataModule` over the synthetic demo set, generated on first use.

    Args:
        root: where the demo set lives (``data_cache/demo_coco``, git-ignored).
        num_train: training images to generate.
        num_val: validation images to generate.
        size_range: range of generated image sides, pixels.
        seed: generator seed.
        num_threads: torch intra-op CPU threads of the training process, set at setup (``None``: torch's
            default, one per core). On CPUs shared with other jobs, 1 avoids the oversubscription stalls
            that made a 2-thread run 5-10x slower in our measurements.
        image_size, evaluation, train_mode, native_scale, scale_range, hflip, min_box_size, with_masks, batch_size,
            eval_batch_size, num_workers, global_batch_size: as in :class:`COCODetectionDataModule` (the json/image paths are set here).
    """

    def __init__(self, root: str = "data_cache/demo_coco", num_train: int = 320, num_val: int = 64,
                 size_range: tuple[int, int] = (112, 160), seed: int = 0, image_size: int = 128,
                 scale_range: tuple[float, float] = (0.75, 1.25), hflip: float = 0.5, min_box_size: float = 1.0,
                 with_masks: bool = False, batch_size: int = 8, eval_batch_size: int | None = None,
                 num_workers: int = 1, num_threads: int | None = None,
                 global_batch_size: int | None = None, evaluation: Evaluation | None = None,
                 train_mode: str = "resize", native_scale: float = 1.0) -> None:
        super().__init__(root=root, train_json="annotations/instances_train.json", train_images="train",
                         val_json="annotations/instances_val.json", val_images="val", image_size=image_size,
                         evaluation=evaluation, train_mode=train_mode,
                         native_scale=native_scale,
                         scale_range=scale_range, hflip=hflip, min_box_size=min_box_size, with_masks=with_masks,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         global_batch_size=global_batch_size)
        self.demo_args = {"num_train": num_train, "num_val": num_val, "size_range": tuple(size_range), "seed": seed}
        if num_threads is not None and num_threads < 1:
            raise ConfigError(f"data num_threads must be >= 1 or null, got {num_threads}")
        self.num_threads = num_threads

    @property
    def num_classes(self) -> int:
        """The demo's categories (known before the set is generated)."""
        return len(CATEGORIES)

    def prepare_data(self) -> None:
        generate_demo_coco(self.root, **self.demo_args)

    def setup(self, stage: str | None = None) -> None:
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        generate_demo_coco(self.root, **self.demo_args)
        super().setup(stage)
