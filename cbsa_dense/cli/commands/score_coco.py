"""``cbsa-dense score coco``: the 12 COCO numbers of a results json against a ground-truth json.

Runs the same evaluator as the training task (:class:`cbsa_dense.metrics.coco_map.COCOMeanAveragePrecision`,
faster_coco_eval backend, float64 thresholds, crowd regions and json areas), and prints one JSON object
to stdout: ``{"AP": ..., "AP50": ..., ..., "ARl": ...}`` as fractions, equal to pycocotools' summary.

Both files are checked first; a malformed entry stops the command with one line naming the file, the entry
and the value (exit status 2): invalid JSON, duplicate ids, results that are not objects, with a null or
non-finite score, a category or image absent from the ground truth, a missing or malformed ``bbox``
(``segmentation`` for ``--iou-type segm``). Ground-truth annotations without ``area`` get the box's ``w * h``
(bbox) or the mask area (segm); pycocotools fails on them.

``--max-dets`` sets the three detection limits per image (default COCO's 1 10 100); AP and everything but
the two smaller ``AR{m}`` are computed at the largest (for crowded scenes, e.g. ``--max-dets 1 10 300``;
pycocotools' ``summarize`` would still report its headline AP at 100).

Unlike pycocotools, annotations are renumbered internally, so a ground-truth annotation with id 0 is
matched like any other (pycocotools never matches it); a note goes to stderr when that happens.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbsa-dense score coco",
        description="Score a COCO results json against a COCO ground-truth json (12 COCO numbers as JSON).")
    parser.add_argument("--gt", required=True, type=Path, help="COCO instances ground-truth json")
    parser.add_argument("--results", required=True, type=Path,
                        help="COCO results json: a list of {image_id, category_id, score, bbox | segmentation}")
    parser.add_argument("--iou-type", default="bbox", choices=("bbox", "segm"), help="box or mask IoU")
    parser.add_argument("--max-dets", nargs=3, type=int, default=[1, 10, 100], metavar=("M1", "M2", "M3"),
                        help="detection limits per image, increasing (default: COCO's 1 10 100; AP counts the top "
                             "M3 detections per image, e.g. 1 10 300 for crowded scenes)")
    return parser


def load_ground_truth(path: Path, iou_type: str):
    """Read and check a COCO ground-truth json (structure, ids, boxes; masks for segm) into a ``COCO`` index."""
    from pycocotools.coco import COCO

    from cbsa_dense.data.coco_dataset import COCOFormatError, read_json, validate_coco

    dataset, _ = validate_coco(read_json(path), path, check_masks=iou_type == "segm", check_geometry=False,
                               drop_hint=False)
    if iou_type == "segm":
        for image in dataset["images"]:
            if "height" not in image or "width" not in image:
                raise COCOFormatError(f"{path}: image id {image['id']} has no height/width, which segm evaluation "
                                      "needs to decode masks; add them")
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from cbsa_dense.data.coco_dataset import read_json
    from cbsa_dense.metrics.coco_map import check_max_dets, evaluate_coco

    max_dets = check_max_dets(args.max_dets, "--max-dets")
    gt = load_ground_truth(args.gt, args.iou_type)
    results = read_json(args.results)
    if 0 in gt.anns:
        print(f"note: {args.gt} has an annotation with id 0; pycocotools never matches it, this evaluator does",
              file=sys.stderr)
    stats = evaluate_coco(gt, results, args.iou_type, max_detection_thresholds=max_dets, source=str(args.results))
    print(json.dumps(stats))
    return 0
