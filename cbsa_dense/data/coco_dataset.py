"""COCO-format instance data: a validated pycocotools index and a torch ``Dataset`` over images + annotations.

Protocol (protocols.md): sparse category ids map to contiguous labels 0..C-1 (sorted by id) and back
when writing results; ``iscrowd`` annotations are never training targets but go to evaluation;
images without (non-crowd) annotations are skipped in training and kept in evaluation; ``area`` from
the json defines small/medium/large; boxes are [x, y, w, h] in the json and xyxy pixels in samples.
The json checks live in :mod:`cbsa_dense.data.coco_validation`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from cbsa_dense.data.coco_validation import COCOFormatError, annotation_mask, read_json, validate_coco
from cbsa_dense.data.seg_labels import read_image
from cbsa_dense.errors import DataError


def load_coco(json_path: str | Path, image_dir: str | Path | None = None, drop_invalid: bool = False, *,
              require_annotations: bool = True, check_masks: bool = False, check_geometry: bool = True,
              allow_outside_root: bool = False) -> COCO:
    """Read (:func:`~cbsa_dense.data.coco_validation.read_json`) and validate
    (:func:`~cbsa_dense.data.coco_validation.validate_coco`, same keyword arguments) a COCO json into a
    pycocotools ``COCO`` index. The index also carries ``dropped`` (the counter of dropped items by reason) and
    ``source_counts`` (images and annotations in the file before validation)."""
    json_path = Path(json_path)
    dataset = read_json(json_path)
    clean, dropped = validate_coco(dataset, json_path, image_dir, drop_invalid, require_annotations=require_annotations,
                                   check_masks=check_masks, check_geometry=check_geometry,
                                   allow_outside_root=allow_outside_root)
    coco = COCO()
    coco.dataset = clean
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    coco.dropped = dropped
    coco.source_counts = (len(dataset["images"]), len(dataset.get("annotations", [])))
    return coco


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
            image = read_image(path)          # as a viewer shows it: EXIF orientation, 16-bit scaled
        except DataError as err:
            raise COCOFormatError(f"{err} (image id {info['id']})") from err
        if ("height" in info and image.shape[0] != info["height"]) or ("width" in info and image.shape[1] != info["width"]):
            raise COCOFormatError(f"image {path} is {image.shape[1]}x{image.shape[0]} but its json entry "
                                  f"(image id {info['id']}) says {info.get('width')}x{info.get('height')}; fix the "
                                  "json's width/height or the image")
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
