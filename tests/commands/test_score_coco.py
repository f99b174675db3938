"""``cbsa-dense score coco`` through the real CLI entry."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cbsa_dense.cli import main

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def _pycocotools(gt_path, res_path, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(str(res_path)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_score_coco_reproduces_pycocotools_on_shared_data(shared_dir, iou_type, capsys):
    root = shared_dir / "data" / "coco_val2014_100"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    gt, res = root / "instances_val2014_100.json", root / f"instances_val2014_fake{iou_type}100_results.json"
    assert main(["score", "coco", "--gt", str(gt), "--results", str(res), "--iou-type", iou_type]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == KEYS
    np.testing.assert_allclose([out[k] for k in KEYS], _pycocotools(gt, res, iou_type), atol=1e-6)


def test_score_coco_perfect_predictions_and_errors(tmp_path, capsys):
    gt = {"images": [{"id": 5, "width": 50, "height": 40}, {"id": 2, "width": 30, "height": 30}],
          "annotations": [{"id": 1, "image_id": 5, "category_id": 4, "bbox": [3, 4, 20, 10], "area": 200.0,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0, 0, 10, 10], "area": 100.0,
                           "iscrowd": 0}],
          "categories": [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]}
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5}
           for a in gt["annotations"]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    args = ["score", "coco", "--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json")]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["AP"] == pytest.approx(1.0) and out["AP50"] == pytest.approx(1.0)

    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 77, "category_id": 4, "bbox": [0, 0, 1, 1],
                                                     "score": 1.0}]))
    assert main(args[:4] + ["--results", str(tmp_path / "bad.json")]) == 2
    assert "image_id 77" in capsys.readouterr().err
    assert main(args[:4] + ["--results", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
