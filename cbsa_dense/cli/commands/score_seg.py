"""``cbsa-dense score seg``: score predicted label PNGs against ground-truth PNGs (MMSegmentation's mIoU).

Files are matched by stem (every ground-truth file needs a prediction of the same size). Problems in the files
(a missing prediction, a size mismatch, a colour image instead of class indices, a ground-truth value outside
the classes) stop the command with one line naming the file (exit status 2). The same label reduction is
applied to both (``--reduce-zero-label``: 0 -> ignored, k -> k - 1); ground-truth pixels equal to the
ignore index are not scored; predictions outside the classes count as wrong. Prints one JSON object:
``{"mIoU", "aAcc", "mAcc", "IoU": [per class, null when the class has an empty union], "Acc": [...],
"num_images"}`` with fractions. Same computation as the training metric
(:class:`cbsa_dense.metrics.miou.SegmentationMetrics`).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from cbsa_dense.data.seg_labels import IGNORE_INDEX, read_label_map, reduce_zero_label
from cbsa_dense.errors import ConfigError, DataError
from cbsa_dense.metrics.miou import SegmentationMetrics


def _read(path: Path) -> np.ndarray:
    return read_label_map(path, what="label map")


def _prepare(values: np.ndarray, reduce_zero: bool, ignore_index: int) -> np.ndarray:
    if ignore_index != IGNORE_INDEX:
        ignored = values == ignore_index
        values = np.where(values == IGNORE_INDEX, -1, values)
        values[ignored] = IGNORE_INDEX
    return reduce_zero_label(values) if reduce_zero else values


#: Largest ``--num-classes``: the (C, C) int64 confusion matrix stays within 2 GiB.
MAX_CLASSES = 16384


def score_dirs(pred_dir: Path, gt_dir: Path, num_classes: int, reduce_zero: bool = False,
               ignore_index: int = IGNORE_INDEX) -> dict:
    """Score every ``gt_dir/*.png`` against ``pred_dir/<same stem>.png``; returns the JSON-ready dict."""
    for flag, folder in (("--pred", pred_dir), ("--gt", gt_dir)):
        if not folder.is_dir():
            raise DataError(f"{flag} folder {folder} " + ("is a file, not a folder" if folder.exists() else
                                                          "does not exist") + "; give the folder of label PNGs")
    if num_classes < 1:
        raise ConfigError(f"--num-classes {num_classes}: give the number of classes (>= 1)")
    if num_classes > MAX_CLASSES:
        raise ConfigError(f"--num-classes {num_classes} is more than {MAX_CLASSES}: its {num_classes}x{num_classes} "
                          f"confusion matrix would need {num_classes ** 2 * 8 / 2 ** 30:.0f} GiB; give the real "
                          f"number of classes")
    gts = sorted(gt_dir.glob("*.png"))
    if not gts:
        raise DataError(f"no ground-truth PNGs in {gt_dir}; give the folder of ground-truth label PNGs as --gt")
    missing = [g for g in gts if not (pred_dir / g.name).is_file()]
    if missing:
        raise DataError(f"no prediction {pred_dir / missing[0].name} for ground truth {missing[0]} ({len(missing)} of "
                        f"{len(gts)} ground-truth files have none); predict every image, same file names")
    metric = SegmentationMetrics(num_classes)
    for gt_path in gts:
        pred_path = pred_dir / gt_path.name
        gt = _prepare(_read(gt_path), reduce_zero, ignore_index)
        pred = _prepare(_read(pred_path), reduce_zero, ignore_index)
        if gt.shape != pred.shape:
            raise DataError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} (WxH) but ground truth "
                            f"{gt_path} is {gt.shape[1]}x{gt.shape[0]}; predict at the ground truth's size")
        try:
            metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
        except ValueError as err:
            raise DataError(f"{gt_path}: {err}; check --num-classes, --reduce-zero-label and --ignore-index") from err
    scores = metric.compute()

    def clean(value: float) -> float | None:
        return None if math.isnan(value) else value

    return {"mIoU": clean(scores["miou"].item()), "aAcc": clean(scores["aacc"].item()),
            "mAcc": clean(scores["macc"].item()), "IoU": [clean(v) for v in scores["iou"].tolist()],
            "Acc": [clean(v) for v in scores["acc"].tolist()], "num_images": len(gts)}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cbsa-dense score seg", description=__doc__.splitlines()[0])
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted label PNGs")
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth label PNGs")
    parser.add_argument("--num-classes", required=True, type=int, help="number of classes (after reduction)")
    parser.add_argument("--reduce-zero-label", action="store_true",
                        help="0 is unlabelled and class k is stored as k + 1 (ADE20K), in both folders")
    parser.add_argument("--ignore-index", type=int, default=IGNORE_INDEX,
                        help="ground-truth value that is not scored (default 255)")
    args = parser.parse_args(argv)
    result = score_dirs(args.pred, args.gt, args.num_classes, args.reduce_zero_label, args.ignore_index)
    print(json.dumps(result))
    return 0
