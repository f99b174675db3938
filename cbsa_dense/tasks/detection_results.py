"""Detection results: COCO results entries of predictions, the per-class detection counts a metric holds, and
the COCO results of every rank merged into one list (each image once, deterministic order)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from pycocotools import mask as mask_utils
from torch import Tensor

from cbsa_dense.metrics.coco_map import COCOMeanAveragePrecision


def class_note(has_ap: bool, detections: int) -> str:
    """What a class's AP and detection count say beyond its AP (COCO gives no AP without ground truth)."""
    if not has_ap:
        return "not in the ground truth" if detections else "absent"
    return "never predicted" if detections == 0 else ""


def detections_per_class(metric: COCOMeanAveragePrecision, num_classes: int) -> list[int]:
    """The detections of each class that ``metric`` holds, over all processes (each image once when the metric
    has image ids). Collective under DDP, like ``compute``: every rank calls it."""
    with metric.sync_context(dist_sync_fn=metric.dist_sync_fn, process_group=metric.process_group,
                             should_sync=metric.sync_on_compute, distributed_available=metric.distributed_available_fn):
        order = metric._image_order()
        labels = list(metric.detection_labels)
        if order is not None:
            labels = [labels[i] for i in order]
        flat = torch.cat([t.reshape(-1).long().cpu() for t in labels]) if labels else torch.zeros(0, dtype=torch.long)
    flat = flat[(flat >= 0) & (flat < num_classes)]
    return torch.bincount(flat, minlength=num_classes).tolist()


def gather_results(trainer, results: list[dict]) -> list[dict] | None:
    """Every rank's ``results`` merged by :func:`merge_results` on rank 0 (``None`` on the other ranks).

    Collective under DDP: every rank must call it (the epoch-end hooks do, on every rank).
    """
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        shares = [None] * dist.get_world_size() if trainer.is_global_zero else None
        dist.gather_object(results, shares, dst=0)
    else:
        if trainer.world_size > 1:
            rank_zero_warn("results json holds rank 0's share of the images only (no torch.distributed "
                           "process group to gather the other ranks' results)")
        shares = [results]
    return merge_results(shares) if trainer.is_global_zero else None


def merge_results(shares: list[list[dict]]) -> list[dict]:
    """One COCO results list from the ranks' shares, in a deterministic order.

    An image that several ranks processed (a ``DistributedSampler`` pads the last shares with repeated
    images) keeps the entries of the first rank that has it. Entries are sorted by ``image_id``, then by
    score, highest first (ties keep their order), so any number of processes gives the same list.
    """
    by_image: dict[int, list[dict]] = {}
    for share in shares:
        mine: dict[int, list[dict]] = defaultdict(list)
        for entry in share:
            mine[int(entry["image_id"])].append(entry)
        for image_id, entries in mine.items():
            by_image.setdefault(image_id, entries)
    return [entry for image_id in sorted(by_image)
            for entry in sorted(by_image[image_id], key=lambda e: -e["score"])]


def coco_results(preds: list[dict[str, Tensor]], image_ids, category_ids: list[int]) -> list[dict]:
    """COCO results entries of one batch of predictions: json category ids (``category_ids[label]``), xywh
    boxes, unrounded scores (equal to the metric's), RLE masks where the predictions have masks."""
    results = []
    for pred, image_id in zip(preds, image_ids):
        boxes = pred["boxes"].detach().cpu().double()
        boxes[:, 2:] -= boxes[:, :2]
        masks = pred.get("masks")
        if masks is not None:
            rles = mask_utils.encode(np.asfortranarray(masks.detach().cpu().numpy().transpose(1, 2, 0)
                                                       .astype(np.uint8))) if len(masks) else []
        for i, (box, score, label) in enumerate(zip(boxes.tolist(), pred["scores"].tolist(),
                                                    pred["labels"].tolist())):
            entry = {"image_id": int(image_id), "category_id": int(category_ids[int(label)]),
                     "bbox": box, "score": float(score)}  # unrounded: scores equal the metric's
            if masks is not None:
                entry["segmentation"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"].decode("ascii")}
            results.append(entry)
    return results

