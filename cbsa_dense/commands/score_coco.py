"""``cbsa-dense score coco``: the 12 COCO numbers of a results json against a ground-truth json.

Runs the same evaluator as the training task (:class:`cbsa_dense.metrics.coco_map.COCOMeanAveragePrecision`,
faster_coco_eval backend, float64 thresholds, crowd regions and json areas), and prints one JSON object
to stdout: ``{"AP": ..., "AP50": ..., ..., "ARl": ...}`` as fractions, equal to pycocotools' summary.

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
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from pycocotools.coco import COCO

    from cbsa_dense.metrics.coco_map import evaluate_coco

    for path in (args.gt, args.results):
        if not path.is_file():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(args.gt))
        results = json.loads(args.results.read_text())
    except (ValueError, KeyError, TypeError) as err:
        print(f"error: cannot read {args.gt} / {args.results} as COCO json: {err}", file=sys.stderr)
        return 2
    if not isinstance(results, list):
        print(f"error: {args.results} must hold a list of results, got {type(results).__name__}", file=sys.stderr)
        return 2
    if 0 in gt.anns:
        print(f"note: {args.gt} has an annotation with id 0; pycocotools never matches it, this evaluator does",
              file=sys.stderr)
    try:
        stats = evaluate_coco(gt, results, args.iou_type)
    except ValueError as err:
        print(f"error: {args.results}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0
