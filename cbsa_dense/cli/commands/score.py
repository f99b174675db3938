"""``cbsa-dense score {seg,coco} ...``: dispatch to the scorer of one task kind."""

from __future__ import annotations

import importlib

from cbsa_dense.errors import ConfigError

SCORERS = {"seg": "cbsa_dense.cli.commands.score_seg", "coco": "cbsa_dense.cli.commands.score_coco"}


def main(argv: list[str]) -> int:
    if not argv:
        raise ConfigError("give what to score: seg (label PNGs) or coco (a COCO results json), e.g. "
                          "cbsa-dense score seg --help")
    if argv[0] not in SCORERS and argv[0] not in ("-h", "--help"):
        raise ConfigError(f"unknown scorer {argv[0]!r}: give seg (label PNGs) or coco (a COCO results json), e.g. "
                          "cbsa-dense score seg --help")
    if argv[0] not in SCORERS:
        print("usage: cbsa-dense score {seg,coco} [-h] ...\n"
              "  seg   score predicted label PNGs against ground-truth PNGs (mIoU, aAcc, mAcc)\n"
              "  coco  score a COCO results json against a COCO ground-truth json (12 COCO numbers)")
        return 0
    return int(importlib.import_module(SCORERS[argv[0]]).main(argv[1:]) or 0)
