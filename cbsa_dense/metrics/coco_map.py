"""COCO mAP that equals pycocotools: torchmetrics' ``MeanAveragePrecision`` configured correctly.

torchmetrics' defaults move COCO mAP by up to 2e-4 (float32 IoU/recall thresholds) and ignore crowd
regions and the json ``area`` unless they are given (protocols.md). :class:`COCOMeanAveragePrecision`
fixes the thresholds to float64, uses the faster_coco_eval backend, and expects ``iscrowd`` and
``area`` in the targets. :func:`coco_to_metric_inputs` turns a COCO ground-truth json plus a COCO
results list into the metric's inputs, so ``cbsa-dense score coco`` and the training task run the same
evaluation code.

Two pitfalls of the torchmetrics conversion are handled here:

- with ``iou_type="segm"`` alone, torchmetrics drops images without ground-truth masks, so detections on
  them would not count as false positives (pycocotools counts them): segm is always evaluated together
  with bbox;
- box coordinates are kept in float64 so json values reach the evaluator unchanged;
- images are fed in increasing id order, as pycocotools ranks detections of equal score.

One pycocotools quirk is not copied: its ``loadRes`` gives segm results that also carry a ``bbox`` the
box area (not the mask area) for the small/medium/large split; here detections always get the mask
area in segm evaluation, which equals pycocotools for results in the COCO API's segm format (no bbox).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

from cbsa_dense.data.coco_dataset import annotation_mask

#: The 12 COCO summary numbers: our key -> torchmetrics' key (without the ``bbox_``/``segm_`` prefix).
COCO_STATS: dict[str, str] = {
    "AP": "map", "AP50": "map_50", "AP75": "map_75", "APs": "map_small", "APm": "map_medium",
    "APl": "map_large", "AR1": "mar_1", "AR10": "mar_10", "AR100": "mar_100", "ARs": "mar_small",
    "ARm": "mar_medium", "ARl": "mar_large",
}

IouType = Literal["bbox", "segm"]


class COCOMeanAveragePrecision(MeanAveragePrecision):
    """COCO box (and mask) mAP, numerically equal to pycocotools.

    Inputs per image (torchmetrics' format): predictions ``{"boxes": (N, 4), "scores": (N,), "labels":
    (N,), "masks": (N, H, W) bool (segm only)}``; targets ``{"boxes": (M, 4), "labels": (M,),
    "iscrowd": (M,) int, "area": (M,) float, "masks": (M, H, W) bool (segm only)}``, boxes in pixels of
    the original image. Update per step, compute once per epoch.

    Args:
        iou_types: ``"bbox"``, ``"segm"`` or both; ``"segm"`` implies ``"bbox"`` (see module docstring).
        box_format: ``"xyxy"`` (the model's) or ``"xywh"`` (COCO json's).
        class_metrics: also compute per-class AP (doubles the time).
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    def __init__(self, iou_types: IouType | Sequence[IouType] = "bbox",
                 box_format: Literal["xyxy", "xywh"] = "xyxy", class_metrics: bool = False, **kwargs) -> None:
        types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
        unknown = set(types) - {"bbox", "segm"}
        if unknown or not types:
            raise ValueError(f"iou_types must be 'bbox' and/or 'segm', got {iou_types!r}")
        types = ("bbox", "segm") if "segm" in types else ("bbox",)
        super().__init__(box_format=box_format, iou_type=types,
                         iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                         rec_thresholds=np.linspace(0.0, 1.0, 101).tolist(),
                         max_detection_thresholds=[1, 10, 100], class_metrics=class_metrics,
                         backend="faster_coco_eval", **kwargs)
        self.warn_on_many_detections = False

    def coco_stats(self, result: dict[str, Tensor] | None = None, iou_type: IouType = "bbox") -> dict[str, float]:
        """The 12 COCO numbers (``AP``, ``AP50``, ... ``ARl``) of one IoU type as floats (fractions).

        Args:
            result: output of :meth:`compute` (computed now if ``None``).
            iou_type: which of the computed IoU types to report.
        """
        if iou_type not in self.iou_type:
            raise ValueError(f"iou_type {iou_type!r} was not computed (metric has {self.iou_type})")
        result = self.compute() if result is None else result
        prefix = f"{iou_type}_" if len(self.iou_type) > 1 else ""
        return {ours: float(result[prefix + theirs]) for ours, theirs in COCO_STATS.items()}


def _stack_masks(masks: list[np.ndarray], height: int, width: int) -> Tensor:
    if not masks:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(np.stack(masks).astype(bool))


def coco_to_metric_inputs(gt, results: list[dict], iou_type: IouType = "bbox", image_ids: Sequence[int] | None = None):
    """Yield ``(preds, targets)`` per image, in torchmetrics' format with ``box_format="xywh"``.

    Boxes stay in COCO's xywh and float64; detections keep the results file's order (pycocotools sorts
    them with a stable sort, so ties resolve the same way); segm detections without a ``bbox`` get the
    RLE's bounding box, as pycocotools' ``loadRes`` does.

    Args:
        gt: a ``pycocotools.coco.COCO`` ground truth.
        results: COCO results entries (``image_id``, ``category_id``, ``score`` and ``bbox`` or
            ``segmentation``).
        iou_type: ``"segm"`` also yields masks (decoded per image, so memory stays per image).
        image_ids: images to yield (default: every image of ``gt`` in increasing id order, like
            pycocotools; the order decides how equal scores of different images rank).

    Raises:
        ValueError: a result names an image absent from the ground truth, or lacks the field the
            IoU type needs.
    """
    by_image: dict[int, list[dict]] = defaultdict(list)
    for i, res in enumerate(results):
        if res.get("image_id") not in gt.imgs:
            raise ValueError(f"result #{i} has image_id {res.get('image_id')!r}, which is not in the ground truth")
        needed = "segmentation" if iou_type == "segm" else "bbox"
        if needed not in res:
            raise ValueError(f"result #{i} (image {res['image_id']}) has no {needed!r} field for iou_type {iou_type!r}")
        by_image[res["image_id"]].append(res)
    for image_id in sorted(gt.getImgIds()) if image_ids is None else image_ids:
        info = gt.imgs[image_id]
        anns = gt.imgToAnns.get(image_id, [])
        dets = by_image.get(image_id, [])
        target = {
            "boxes": torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float64),
        }
        if iou_type == "segm":
            det_boxes = [d["bbox"] if "bbox" in d else mask_utils.toBbox(d["segmentation"]).tolist() for d in dets]
        else:
            det_boxes = [d["bbox"] for d in dets]
        pred = {
            "boxes": torch.tensor(det_boxes, dtype=torch.float64).reshape(-1, 4),
            "scores": torch.tensor([float(d["score"]) for d in dets], dtype=torch.float64),
            "labels": torch.tensor([d["category_id"] for d in dets], dtype=torch.int64),
        }
        if iou_type == "segm":
            h, w = int(info["height"]), int(info["width"])
            target["masks"] = _stack_masks([annotation_mask(a["segmentation"], h, w) for a in anns], h, w)
            pred["masks"] = _stack_masks([annotation_mask(d["segmentation"], h, w) for d in dets], h, w)
        yield [pred], [target]


def evaluate_coco(gt, results: list[dict], iou_type: IouType = "bbox") -> dict[str, float]:
    """The 12 COCO numbers of ``results`` against ``gt`` through :class:`COCOMeanAveragePrecision`."""
    metric = COCOMeanAveragePrecision(iou_types=iou_type, box_format="xywh")
    for preds, targets in coco_to_metric_inputs(gt, results, iou_type):
        metric.update(preds, targets)
    return metric.coco_stats(iou_type=iou_type)
