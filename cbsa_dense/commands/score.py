"""``cbsa-dense score {seg,coco} ...``: dispatch to the scorer of one task kind."""

from __future__ import annotations

import importlib

SCORERS = {"seg": "cbsa_dense.commands.score_seg", "coco": "cbsa_dense.commands.score_coco"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SCORERS:
        print("usage: cbsa-dense score {seg,coco} [-h] ...\n"
              "  seg   score predicted label PNGs against ground-truth PNGs (mIoU, aAcc, mAcc)\n"
              "  coco  score a COCO results json against a COCO ground-truth json (12 COCO numbers)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(SCORERS[argv[0]]).main(argv[1:]) or 0)
