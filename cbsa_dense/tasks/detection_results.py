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


def per_class_values(result: dict, prefix: str, max_dets: int, num_classes: int) -> list[tuple[float | None, float | None]]:
    """(AP, AR at ``max_dets``) of every class of one IoU type in a COCO metric's ``result`` (keys prefixed
    ``prefix_`` when the metric scores several IoU types); ``None`` where COCO gives none (no ground truth of the
    class; the metric computed without ``class_metrics``)."""
    src = f"{prefix}_" if prefix else ""
    classes = result.get("classes", torch.zeros(0)).reshape(-1).tolist()   # never prefixed
    aps = result.get(f"{src}map_per_class", torch.zeros(0)).reshape(-1).tolist()
    ars = result.get(f"{src}mar_{max_dets}_per_class", torch.zeros(0)).reshape(-1).tolist()
    values: list[tuple[float | None, float | None]] = [(None, None)] * num_classes
    for label, ap, ar in zip(classes, aps, ars):
        if 0 <= int(label) < num_classes:
            values[int(label)] = (ap if ap >= 0 else None, ar if ar >= 0 else None)
    return values


def per_class_table(names: list[str], values: list[tuple[float | None, float | None]], detections: list[int],
                    iou_type: str, ar_name: str, at: str = "") -> str:
    """The per-class AP table of one IoU type: AP, AR, the number of detections, and a note: "never predicted" for
    a class with ground truth and no detection, "not in the ground truth" for one with detections only ("-": COCO
    gives it no AP)."""
    rows, never = [], []
    for name, (ap, ar), count in zip(names, values, detections):
        note = class_note(ap is not None, count)
        if note == "never predicted":
            never.append(name)
        cells = ["-" if v is None else f"{v:.4f}" for v in (ap, ar)]
        rows.append(f"{name:<24} {cells[0]:>7} {cells[1]:>7} {count:>10}  {note}".rstrip())
    header = f"{'class':<24} {'AP':>7} {ar_name:>7} {'detections':>10}  note"
    footer = f"\nnever predicted: {', '.join(never)} (no detection; their AP is 0)" if never else ""
    return f"per-class {iou_type} AP{at}\n{header}\n" + "\n".join(rows) + footer


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

