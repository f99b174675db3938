"""COCO mAP that equals pycocotools: torchmetrics' ``MeanAveragePrecision`` configured correctly.

torchmetrics' defaults move COCO mAP by up to 2e-4 (float32 IoU/recall thresholds) and ignore crowd
regions and the json ``area`` unless they are given (protocols.md). :class:`COCOMeanAveragePrecision`
fixes the thresholds to float64, uses the faster_coco_eval backend, and expects ``iscrowd`` and
``area`` in the targets. :func:`coco_to_metric_inputs` turns a COCO ground-truth json plus a COCO
results list into the metric's inputs, so ``cbsa-dense score coco`` and the training task run the same
evaluation code.

Pitfalls of the torchmetrics conversion are handled here:

- with ``iou_type="segm"`` alone, torchmetrics drops images without ground-truth masks, so detections on
  them would not count as false positives (pycocotools counts them): segm is always evaluated together
  with bbox;
- box coordinates are kept in float64 so json values reach the evaluator unchanged;
- images are fed in increasing id order, as pycocotools ranks detections of equal score.
- under DDP, Lightning's ``DistributedSampler`` pads the ranks' shares to equal length by repeating
  images (torchmetrics' per-image sync needs equal counts, so an unpadded sampler would hang it): given
  ``image_ids`` at ``update``, :meth:`COCOMeanAveragePrecision.compute` counts each image once, in
  increasing id order, so DDP and a single process give the same numbers.

Detection limits (``max_detection_thresholds``, COCO's ``maxDets``; default ``[1, 10, 100]``): every
number except ``AR{m}`` of the two smaller limits is computed at the LARGEST limit (AP, AP50, AP75, APs/m/l,
ARs/m/l and ``AR{largest}``), as faster_coco_eval does. pycocotools' ``summarize`` differs when the limits are
not COCO's: it computes the headline AP at 100 detections whatever ``maxDets`` says (``-1`` when 100 is not
among them) and the rest at ``maxDets[2]``. For crowded scenes (more than 100 objects per image), raise the
largest limit AND the detection head's ``detections_per_img``; with the default the AP of an image with 150
perfectly predicted objects is below 1.

One pycocotools quirk is not copied: its ``loadRes`` gives segm results that also carry a ``bbox`` the
box area (not the mask area) for the small/medium/large split; here detections always get the mask
area in segm evaluation, which equals pycocotools for results in the COCO API's segm format (no bbox).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

from cbsa_dense.data.coco_validation import (
    _is_id,
    _is_number,
    _short,
    annotation_mask,
    bbox_problem,
    fill_area,
    json_type,
    segmentation_problem,
)
from cbsa_dense.errors import ConfigError, DataError

#: The 12 COCO summary numbers: our key -> torchmetrics' key (without the ``bbox_``/``segm_`` prefix).
COCO_STATS: dict[str, str] = {
    "AP": "map", "AP50": "map_50", "AP75": "map_75", "APs": "map_small", "APm": "map_medium",
    "APl": "map_large", "AR1": "mar_1", "AR10": "mar_10", "AR100": "mar_100", "ARs": "mar_small",
    "ARm": "mar_medium", "ARl": "mar_large",
}

IouType = Literal["bbox", "segm"]

#: torchmetrics ``MeanAveragePrecision`` states that hold one entry per image.
_PER_IMAGE_STATES = ("detection_box", "detection_mask", "detection_scores", "detection_labels", "groundtruth_box",
                     "groundtruth_mask", "groundtruth_labels", "groundtruth_crowds", "groundtruth_area")

#: COCO's detection limits per image (``maxDets``).
COCO_MAX_DETS: tuple[int, int, int] = (1, 10, 100)


def stat_keys(max_detection_thresholds: Sequence[int] = COCO_MAX_DETS) -> dict[str, str]:
    """The 12 summary numbers for these limits: our key -> torchmetrics' key (``AR1``, ``AR10``, ``AR{largest}``)."""
    keys = dict(COCO_STATS)
    ars = {f"AR{m}": f"mar_{m}" for m in max_detection_thresholds}
    out = {}
    for ours, theirs in keys.items():
        if ours == "AR1":
            out.update(ars)
        elif ours not in ("AR10", "AR100"):
            out[ours] = theirs
    return out


def check_max_dets(max_detection_thresholds: Sequence[int], name: str = "max_detection_thresholds") -> list[int]:
    """Three strictly increasing positive integers (COCO's ``maxDets``), else a :class:`ConfigError`."""
    values = list(max_detection_thresholds) if isinstance(max_detection_thresholds, list | tuple) else None
    if (values is None or len(values) != 3 or not all(_is_id(v) and v > 0 for v in values)
            or not values[0] < values[1] < values[2]):
        raise ConfigError(f"{name} {max_detection_thresholds!r}: give three increasing positive "
                          "integers, e.g. [1, 10, 100] (COCO) or [1, 10, 300] for crowded scenes")
    return values


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
        max_detection_thresholds: the three detection limits per image (COCO's ``maxDets``, increasing). AP and
            every number but the two smaller ``AR{m}`` count the top ``max_detection_thresholds[-1]``
            detections per image and class (see the module docstring); detections beyond it are ignored.
        **kwargs: passed to ``torchmetrics.Metric``.
    """

    def __init__(self, iou_types: IouType | Sequence[IouType] = "bbox",
                 box_format: Literal["xyxy", "xywh"] = "xyxy", class_metrics: bool = False,
                 max_detection_thresholds: Sequence[int] = COCO_MAX_DETS, **kwargs) -> None:
        types = (iou_types,) if isinstance(iou_types, str) else tuple(iou_types)
        unknown = set(types) - {"bbox", "segm"}
        if unknown or not types:
            raise ConfigError(f"iou_types must be 'bbox' and/or 'segm', got {iou_types!r}")
        max_dets = check_max_dets(max_detection_thresholds)
        types = ("bbox", "segm") if "segm" in types else ("bbox",)
        super().__init__(box_format=box_format, iou_type=types,
                         iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                         rec_thresholds=np.linspace(0.0, 1.0, 101).tolist(),
                         max_detection_thresholds=max_dets, class_metrics=class_metrics,
                         backend="faster_coco_eval", **kwargs)
        self.warn_on_many_detections = False
        # One (1,) int64 tensor per image, synced like torchmetrics' per-image states (same order after sync).
        self.add_state("image_ids", default=[], dist_reduce_fx=None)

    def update(self, preds: list[dict[str, Tensor]], target: list[dict[str, Tensor]],
               image_ids: Sequence[int] | Tensor | None = None) -> None:
        """Add a batch of images (torchmetrics' ``preds`` / ``target`` per image).

        Args:
            preds: detections per image.
            target: ground truth per image.
            image_ids: the images' ids (give them at every update or never). With ids, :meth:`compute`
                counts each image once (the first copy) and feeds images in increasing id order, so a
                DDP run whose ``DistributedSampler`` pads the last batches with repeated images, or
                hands them out in another order, gives exactly the single-process numbers.
        """
        if image_ids is not None:
            ids = [int(i) for i in (image_ids.reshape(-1).tolist() if isinstance(image_ids, Tensor) else image_ids)]
            if len(ids) != len(target):
                raise ValueError(f"image_ids has {len(ids)} ids for {len(target)} images")
        super().update(preds, target)
        if image_ids is not None:
            self.image_ids.extend(torch.tensor([i], dtype=torch.int64, device=self.device) for i in ids)

    def _image_order(self) -> list[int] | None:
        """Positions of the images to evaluate: the first copy of each id, in increasing id order
        (``None``: no ids given, every image as fed)."""
        if not self.image_ids:
            return None
        if len(self.image_ids) != len(self.groundtruth_labels):
            raise ValueError(f"image_ids given for {len(self.image_ids)} of {len(self.groundtruth_labels)} images; "
                             "give them at every update or never")
        first: dict[int, int] = {}
        for position, image_id in enumerate(self.image_ids):
            first.setdefault(int(image_id.reshape(-1)[0]), position)
        return [first[i] for i in sorted(first)]

    def compute(self) -> dict:
        """torchmetrics' result over the (synced) states, each image counted once when ids were given."""
        order = self._image_order()
        if order is None:
            return super().compute()
        n = len(self.image_ids)
        saved = {name: getattr(self, name) for name in _PER_IMAGE_STATES}
        try:
            for name, value in saved.items():
                if len(value) == n:
                    setattr(self, name, [value[i] for i in order])
                elif len(value):
                    raise ValueError(f"metric state {name} holds {len(value)} entries for {n} images")
            return super().compute()
        finally:  # compute must not change the accumulated (local) state
            for name, value in saved.items():
                setattr(self, name, value)

    def coco_stats(self, result: dict[str, Tensor] | None = None, iou_type: IouType = "bbox") -> dict[str, float]:
        """The 12 COCO numbers (``AP``, ``AP50``, ... ``ARl``; ``AR{m}`` per detection limit) of one IoU type as
        floats (fractions).

        Args:
            result: output of :meth:`compute` (computed now if ``None``).
            iou_type: which of the computed IoU types to report.
        """
        if iou_type not in self.iou_type:
            raise ValueError(f"iou_type {iou_type!r} was not computed (metric has {self.iou_type})")
        result = self.compute() if result is None else result
        prefix = f"{iou_type}_" if len(self.iou_type) > 1 else ""
        return {ours: float(result[prefix + theirs]) for ours, theirs in stat_keys(self.max_detection_thresholds).items()}


def _stack_masks(masks: list[np.ndarray], height: int, width: int) -> Tensor:
    if not masks:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(np.stack(masks).astype(bool))


def _rle_box(segm: dict) -> list[float]:
    """The xywh bounding box of a compressed or uncompressed (counts as a list) RLE."""
    if isinstance(segm.get("counts"), list):
        segm = mask_utils.frPyObjects(segm, *segm["size"])
    return mask_utils.toBbox(segm).tolist()


def check_results(gt, results: Any, iou_type: IouType = "bbox", source: str = "results") -> None:
    """Check a COCO results list against its ground truth; a :class:`DataError` names ``source``, the result's
    index and the offending value.

    Each result must be an object with an ``image_id`` and a ``category_id`` of the ground truth, a finite
    ``score``, a ``bbox`` of four finite numbers (``iou_type="bbox"``; checked too where present in segm), and
    for segm an RLE ``segmentation`` of its image's size.
    """
    needed = "segmentation" if iou_type == "segm" else "bbox"
    if not isinstance(results, list):
        raise DataError(f"{source}: the top level is a JSON {json_type(results)}, expected an array of results "
                        f"{{image_id, category_id, score, {needed}}}")
    cat_ids = set(gt.getCatIds())
    for i, res in enumerate(results):
        if not isinstance(res, dict):
            raise DataError(f"{source}: result #{i} is a JSON {json_type(res)} ({_short(res, 40)}), expected an "
                            f"object {{image_id, category_id, score, {needed}}}")
        image_id = res.get("image_id")
        if not _is_id(image_id) or image_id not in gt.imgs:
            raise DataError(f"{source}: result #{i} has image_id {image_id!r}, which is not in the ground truth; "
                            "score results against the ground truth of the same images")
        where = f"{source}: result #{i} (image_id {image_id})"
        category = res.get("category_id")
        if not _is_id(category) or category not in cat_ids:
            raise DataError(f"{where} has category_id {category!r}, which is not a ground-truth category id "
                            f"{sorted(cat_ids)[:20]}{'...' if len(cat_ids) > 20 else ''}; write the json's category "
                            "ids, not contiguous labels")
        if not _is_number(res.get("score")):
            raise DataError(f"{where} has score {res.get('score')!r}{'' if 'score' in res else ' (missing)'}, "
                            "expected a finite number")
        if needed not in res:
            raise DataError(f"{where} has no {needed!r} field for iou_type {iou_type!r}; give "
                            f"--iou-type {'bbox' if needed == 'segmentation' else 'segm'} or add it")
        if iou_type == "bbox" or "bbox" in res:
            problem = bbox_problem(res["bbox"])
            if not problem and min(res["bbox"][2:]) < 0:
                problem = "negative width or height; write boxes as [x, y, width, height] with width, height >= 0"
            if problem:
                raise DataError(f"{where} has bbox {_short(res['bbox'])}: {problem}")
        if iou_type == "segm":
            info = gt.imgs[image_id]
            segm = res["segmentation"]
            problem = (("", f"segmentation {_short(segm)} is not an RLE object {{size, counts}}")
                       if not isinstance(segm, dict) else
                       segmentation_problem(segm, info.get("height"), info.get("width")))
            if problem:
                raise DataError(f"{where}: {problem[1]}")


def coco_to_metric_inputs(gt, results: list[dict], iou_type: IouType = "bbox", image_ids: Sequence[int] | None = None,
                          source: str = "results"):
    """Yield ``(preds, targets)`` per image, in torchmetrics' format with ``box_format="xywh"``.

    Boxes stay in COCO's xywh and float64; detections keep the results file's order (pycocotools sorts
    them with a stable sort, so ties resolve the same way); segm detections without a ``bbox`` get the
    RLE's bounding box, as pycocotools' ``loadRes`` does. Ground truth without ``area`` gets the box's
    ``w * h`` (bbox) or the mask area (segm), the areas pycocotools' ``loadRes`` gives results (pycocotools
    itself fails on such ground truth).

    Args:
        gt: a ``pycocotools.coco.COCO`` ground truth.
        results: COCO results entries (``image_id``, ``category_id``, ``score`` and ``bbox`` or
            ``segmentation``), checked by :func:`check_results`.
        iou_type: ``"segm"`` also yields masks (decoded per image, so memory stays per image).
        image_ids: images to yield (default: every image of ``gt`` in increasing id order, like
            pycocotools; the order decides how equal scores of different images rank).
        source: the results' name in error messages (their file).

    Raises:
        DataError: a malformed result (see :func:`check_results`).
    """
    check_results(gt, results, iou_type, source)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for res in results:
        by_image[res["image_id"]].append(res)
    for image_id in sorted(gt.getImgIds()) if image_ids is None else image_ids:
        info = gt.imgs[image_id]
        height, width = info.get("height"), info.get("width")
        anns = [fill_area(a, height, width, from_mask=iou_type == "segm") for a in gt.imgToAnns.get(image_id, [])]
        dets = by_image.get(image_id, [])
        target = {
            "boxes": torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4),
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float64),
        }
        if iou_type == "segm":
            det_boxes = [d["bbox"] if "bbox" in d else _rle_box(d["segmentation"]) for d in dets]
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


def evaluate_coco(gt, results: list[dict], iou_type: IouType = "bbox",
                  max_detection_thresholds: Sequence[int] = COCO_MAX_DETS, source: str = "results") -> dict[str, float]:
    """The 12 COCO numbers of ``results`` against ``gt`` through :class:`COCOMeanAveragePrecision` (keys of
    :func:`stat_keys`; ``source`` names the results in error messages)."""
    metric = COCOMeanAveragePrecision(iou_types=iou_type, box_format="xywh",
                                      max_detection_thresholds=max_detection_thresholds)
    for preds, targets in coco_to_metric_inputs(gt, results, iou_type, source=source):
        metric.update(preds, targets)
    return metric.coco_stats(iou_type=iou_type)
