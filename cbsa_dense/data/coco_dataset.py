"""COCO-format instance data: json validation and a torch ``Dataset`` over images + annotations.

Protocol (protocols.md): sparse category ids map to contiguous labels 0..C-1 (sorted by id) and back
when writing results; ``iscrowd`` annotations are never training targets but go to evaluation;
images without (non-crowd) annotations are skipped in training and kept in evaluation; ``area`` from
the json defines small/medium/large; boxes are [x, y, w, h] in the json and xyxy pixels in samples.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

#: Slack, in pixels, for boxes reaching past the image border (COCO has sub-pixel overshoots).
BORDER_TOLERANCE = 1.0


class COCOFormatError(ValueError):
    """A COCO json that cannot be trained or evaluated on as it is."""


def validate_coco(dataset: dict, json_path: str | Path, image_dir: str | Path | None = None,
                  drop_invalid: bool = False) -> tuple[dict, Counter]:
    """Check a COCO instances dict; fail on, or drop, what would corrupt training or evaluation.

    Checks: annotations whose ``image_id`` or ``category_id`` is not declared, malformed, zero-area or
    out-of-image boxes (beyond :data:`BORDER_TOLERANCE`), and (with ``image_dir``) missing image files.

    Args:
        dataset: the parsed json (``images``, ``annotations``, ``categories``).
        json_path: its path, named in messages.
        image_dir: directory of the ``file_name``s; ``None`` skips the file check.
        drop_invalid: drop offending annotations/images and log counts instead of raising.

    Returns:
        The (possibly filtered) dataset and a counter of dropped items by reason.

    Raises:
        COCOFormatError: naming the annotation id (or image file) and ``json_path``, unless dropping.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise COCOFormatError(f"{json_path}: missing or malformed {key!r} list (not a COCO instances json)")
    if not dataset["categories"]:
        raise COCOFormatError(f"{json_path}: 'categories' is empty")
    dropped: Counter = Counter()

    def fail(reason: str, message: str) -> None:
        if not drop_invalid:
            raise COCOFormatError(f"{json_path}: {message} (set drop_invalid=True to drop such entries)")
        dropped[reason] += 1

    images = {}
    for image in dataset["images"]:
        if "id" not in image or "file_name" not in image and image_dir is not None:
            raise COCOFormatError(f"{json_path}: image entry {image} lacks 'id' or 'file_name'")
        if image_dir is not None and not (Path(image_dir) / image["file_name"]).is_file():
            fail("missing image file", f"image id {image['id']}: file {Path(image_dir) / image['file_name']} "
                 "does not exist")
            continue
        images[image["id"]] = image
    declared = {i["id"] for i in dataset["images"]}
    categories = {c["id"] for c in dataset["categories"]}
    annotations = []
    for ann in dataset["annotations"]:
        ann_id = ann.get("id")
        image = images.get(ann.get("image_id"))
        if ann.get("image_id") not in declared:
            fail("unknown image_id", f"annotation id {ann_id} refers to image_id {ann.get('image_id')!r}, "
                 "which is not in 'images'")
            continue
        if image is None:  # its image file is missing and was dropped
            dropped["annotation of a dropped image"] += 1
            continue
        if ann.get("category_id") not in categories:
            fail("unknown category_id", f"annotation id {ann_id} has category_id {ann.get('category_id')!r}, "
                 f"which is not in 'categories' {sorted(categories)}")
            continue
        box = ann.get("bbox")
        if not isinstance(box, list | tuple) or len(box) != 4:
            fail("malformed bbox", f"annotation id {ann_id} has bbox {box!r}, expected [x, y, w, h]")
            continue
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            fail("zero-area bbox", f"annotation id {ann_id} has a zero-area bbox {box} (image "
                 f"{image.get('file_name', image['id'])})")
            continue
        width, height = image.get("width"), image.get("height")
        tol = BORDER_TOLERANCE
        if width is not None and height is not None and (
                x < -tol or y < -tol or x + w > width + tol or y + h > height + tol):
            fail("bbox outside image", f"annotation id {ann_id} has bbox {box} outside its image "
                 f"{image.get('file_name', image['id'])} of size {width}x{height}")
            continue
        annotations.append(ann)
    if dropped:
        log.warning("%s: dropped %s", json_path, ", ".join(f"{n} x {reason}" for reason, n in dropped.items()))
    return {**dataset, "images": list(images.values()), "annotations": annotations}, dropped


def load_coco(json_path: str | Path, image_dir: str | Path | None = None, drop_invalid: bool = False) -> COCO:
    """Read and validate a COCO json (:func:`validate_coco`) into a pycocotools ``COCO`` index."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"COCO annotation file {json_path} does not exist")
    try:
        dataset = json.loads(json_path.read_text())
    except ValueError as err:
        raise COCOFormatError(f"{json_path}: not valid json ({err})") from err
    dataset, _ = validate_coco(dataset, json_path, image_dir, drop_invalid)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def annotation_mask(segm, height: int, width: int) -> np.ndarray:
    """Polygons or (un)compressed RLE -> (height, width) uint8 mask."""
    if isinstance(segm, list):
        if not segm:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle)


class COCODetectionDataset(Dataset):
    """Images and instance annotations of one COCO-format json.

    A sample is a dict: ``image`` (3, H, W) float (after ``transform``), ``boxes`` (N, 4) float32 xyxy
    input pixels and ``labels`` (N,) int64 of the non-crowd objects (training targets), ``masks`` (N, H, W)
    uint8 with ``with_masks``, ``image_id`` (the json's), ``orig_size`` (h, w), ``scale`` (y, x) input
    pixels per original pixel, ``image_size`` (h, w) of the unpadded image in input pixels and, with ``with_gt``, ``gt``: the evaluation ground truth in original pixels
    (``boxes`` xyxy float64, ``labels``, ``iscrowd``, ``area`` and, with masks, ``masks`` bool).

    Args:
        coco: a validated ``COCO`` index (:func:`load_coco`).
        image_dir: directory of the images' ``file_name``.
        category_ids: json category id of each contiguous label.
        transform: callable ``(image uint8 HWC, boxes xyxy (N, 4), labels, masks list) -> dict`` with
            ``image``, ``boxes``, ``labels``, ``masks``, ``scale``, ``image_size``
            (:class:`cbsa_dense.data.det_transforms.DetectionTransform`).
        train: skip images without non-crowd annotations.
        with_masks: decode instance masks (polygons and RLE).
        with_gt: attach the evaluation ground truth.
    """

    def __init__(self, coco: COCO, image_dir: str | Path, category_ids: list[int], transform: Callable | None,
                 train: bool, with_masks: bool = False, with_gt: bool = True) -> None:
        self.coco = coco
        self.image_dir = Path(image_dir)
        self.category_ids = list(category_ids)
        self.label_of = {cid: i for i, cid in enumerate(self.category_ids)}
        self.transform = transform
        self.with_masks = with_masks
        self.with_gt = with_gt
        ids = sorted(coco.getImgIds())  # pycocotools ranks equal scores in increasing image id order
        if train:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in coco.imgToAnns.get(i, []))]
        self.image_ids = ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def _read_image(self, info: dict) -> np.ndarray:
        path = self.image_dir / info["file_name"]
        try:
            with Image.open(path) as img:
                image = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise OSError(f"cannot read image {path} (image id {info['id']}): {err}") from err
        if ("height" in info and image.shape[0] != info["height"]) or ("width" in info and image.shape[1] != info["width"]):
            raise COCOFormatError(f"image {path} is {image.shape[1]}x{image.shape[0]} but its json entry "
                                  f"(image id {info['id']}) says {info.get('width')}x{info.get('height')}")
        return image

    def __getitem__(self, index: int) -> dict:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image = self._read_image(info)
        h, w = image.shape[:2]
        anns = self.coco.imgToAnns.get(image_id, [])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        labels = np.array([self.label_of[a["category_id"]] for a in anns], dtype=np.int64)
        crowd = np.array([int(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        masks = [annotation_mask(a.get("segmentation", []), h, w) for a in anns] if self.with_masks else []
        sample = {"image_id": int(image_id), "orig_size": (h, w)}
        if self.with_gt:
            gt = {"boxes": torch.from_numpy(boxes.copy()), "labels": torch.from_numpy(labels),
                  "iscrowd": torch.from_numpy(crowd.astype(np.int64)),
                  "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float64)}
            if self.with_masks:
                gt["masks"] = (torch.from_numpy(np.stack(masks)).bool() if masks
                               else torch.zeros((0, h, w), dtype=torch.bool))
            sample["gt"] = gt
        keep = ~crowd & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = self.transform(image, boxes[keep], labels[keep], [m for m, k in zip(masks, keep) if k])
        sample.update(image=out["image"], boxes=torch.as_tensor(out["boxes"], dtype=torch.float32).reshape(-1, 4),
                      labels=torch.as_tensor(out["labels"], dtype=torch.int64), scale=tuple(float(v) for v in out["scale"]),
                      image_size=tuple(out["image_size"]))
        if self.with_masks:
            size = sample["image"].shape[-2:]
            sample["masks"] = (torch.from_numpy(np.stack(out["masks"])).to(torch.uint8) if len(out["masks"])
                               else torch.zeros((0, *size), dtype=torch.uint8))
        return sample


def collate_detection(samples: list[dict]) -> dict:
    """Batch samples: images padded (bottom/right, zeros) to a common size; the rest as lists."""
    heights = [s["image"].shape[-2] for s in samples]
    widths = [s["image"].shape[-1] for s in samples]
    images = samples[0]["image"].new_zeros((len(samples), 3, max(heights), max(widths)))
    batch = {"image": images}
    for i, s in enumerate(samples):
        images[i, :, :heights[i], :widths[i]] = s["image"]
    keys = [k for k in samples[0] if k != "image"]
    for key in keys:
        batch[key] = [s[key] for s in samples]
    if "masks" in batch:
        batch["masks"] = [torch.nn.functional.pad(m, (0, max(widths) - m.shape[-1], 0, max(heights) - m.shape[-2]))
                          for m in batch["masks"]]
    return batch
