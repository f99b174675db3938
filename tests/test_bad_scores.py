"""``cbsa-dense score coco`` on bad or unusual input (issue #10): malformed results and ground truth fail with
one line naming the file, the entry and the value; ground truth without ``area`` and crowded images
(``--max-dets``) give pycocotools' numbers. Inputs are plain COCO dicts; pycocotools is the reference."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cbsa_dense.cli import main
from tests.conftest import cli_user_error

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]

GT = {"images": [{"id": 5, "width": 50, "height": 40}, {"id": 2, "width": 30, "height": 30}],
      "annotations": [{"id": 1, "image_id": 5, "category_id": 4, "bbox": [3, 4, 20, 10], "area": 200.0, "iscrowd": 0},
                      {"id": 2, "image_id": 2, "category_id": 9, "bbox": [0, 0, 10, 10], "area": 100.0, "iscrowd": 0}],
      "categories": [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]}
GOOD = {"image_id": 5, "category_id": 4, "bbox": [3, 4, 20, 10], "score": 0.5}


def _score(tmp_path: Path, results, gt=GT, iou_type="bbox", raw_results: str | None = None,
           raw_gt: str | None = None, extra=()) -> list[str]:
    (tmp_path / "gt.json").write_text(raw_gt if raw_gt is not None else json.dumps(gt))
    (tmp_path / "res.json").write_text(raw_results if raw_results is not None else json.dumps(results))
    return ["score", "coco", "--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"),
            "--iou-type", iou_type, *extra]


def _without(entry: dict, key: str) -> dict:
    return {k: v for k, v in entry.items() if k != key}


@pytest.mark.parametrize("results, expected", [
    ([{**GOOD, "score": None}], "result #0 (image_id 5) has score None, expected a finite number"),
    ([_without(GOOD, "score")], "result #0 (image_id 5) has score None (missing), expected a finite number"),
    ([{**GOOD, "score": float("nan")}], "result #0 (image_id 5) has score nan"),
    ([GOOD, {**GOOD, "category_id": float("nan")}], "result #1 (image_id 5) has category_id nan, which is not a "
                                                    "ground-truth category id [4, 9]"),
    ([{**GOOD, "category_id": 0}], "result #0 (image_id 5) has category_id 0, which is not a ground-truth category "
                                   "id [4, 9]; write the json's category ids, not contiguous labels"),
    ([{**GOOD, "image_id": 77}], "result #0 has image_id 77, which is not in the ground truth"),
    ([GOOD, "x"], "result #1 is a JSON string ('x'), expected an object {image_id, category_id, score, bbox}"),
    ({"annotations": [GOOD]}, "the top level is a JSON object, expected an array of results"),
    ([_without(GOOD, "bbox")], "result #0 (image_id 5) has no 'bbox' field for iou_type 'bbox'"),
    ([{**GOOD, "bbox": [3, 4, None, 10]}], "result #0 (image_id 5) has bbox [3, 4, None, 10]: value None is not a "
                                           "finite number"),
    ([{**GOOD, "bbox": [3, 4, 20]}], "result #0 (image_id 5) has bbox [3, 4, 20]: expected [x, y, w, h]"),
])
def test_malformed_results_name_file_entry_and_value(tmp_path, capsys, results, expected):
    line = cli_user_error(_score(tmp_path, results), capsys)
    assert f"{tmp_path / 'res.json'}: {expected}" in line, line


def test_malformed_segm_results(tmp_path, capsys):
    rle = {"size": [40, 50], "counts": [100, 20, 1880]}
    line = cli_user_error(_score(tmp_path, [GOOD], iou_type="segm"), capsys)
    assert "result #0 (image_id 5) has no 'segmentation' field for iou_type 'segm'" in line
    line = cli_user_error(_score(tmp_path, [{**GOOD, "segmentation": {**rle, "size": [30, 30],
                                                                       "counts": [900]}}], iou_type="segm"), capsys)
    assert "result #0 (image_id 5): RLE size [30, 30] (height, width) differs from its image's 40x50" in line
    line = cli_user_error(_score(tmp_path, [{**GOOD, "segmentation": [[1, 2, 3, 4, 5, 6]]}], iou_type="segm"), capsys)
    assert "result #0 (image_id 5): segmentation [[1, 2, 3, 4, 5, 6]] is not an RLE object" in line


@pytest.mark.parametrize("gt_mutation, raw_gt, expected", [
    (lambda g: g["images"].append(dict(g["images"][0])), None, "image id 5 is declared twice (images #0 and #2)"),
    (lambda g: g["annotations"][1].update(id=1), None, "annotation id 1 is used twice"),
    (lambda g: g["annotations"][0].update(bbox=[3, 4, float("nan"), 10]), None,
     "annotation id 1 has bbox [3, 4, nan, 10]: value nan is not a finite number; fix the entry"),
    (None, '{"images": [}', "invalid JSON at line 1, column 13"),
    (None, "[1, 2]", "the top level is a JSON array, not an object"),
])
def test_malformed_ground_truth(tmp_path, capsys, gt_mutation, raw_gt, expected):
    gt = copy.deepcopy(GT)
    if gt_mutation is not None:
        gt_mutation(gt)
    line = cli_user_error(_score(tmp_path, [GOOD], gt=gt, raw_gt=raw_gt), capsys)
    assert f"{tmp_path / 'gt.json'}: {expected}" in line, line
    assert "drop_invalid" not in line  # no such option here


def test_invalid_results_json_names_line_and_column(tmp_path, capsys):
    line = cli_user_error(_score(tmp_path, None, raw_results='[{"image_id": 5,\n "score": .5}]'), capsys)
    assert f"{tmp_path / 'res.json'}: invalid JSON at line 2, column 11" in line


def _pycocotools(gt: dict, results: list[dict], iou_type: str, max_dets=None):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iou_type)
        if max_dets is not None:
            evaluator.params.maxDets = list(max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _mask_area(segm, h, w) -> float:
    rles = mask_utils.frPyObjects(segm, h, w) if isinstance(segm, list) or isinstance(segm["counts"], list) else segm
    return float(mask_utils.area(mask_utils.merge(rles) if isinstance(rles, list) else rles))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_without_area_scores_like_pycocotools_with_area_filled(shared_dir, tmp_path, capsys, iou_type):
    root = shared_dir / "data" / "coco_val2014_100"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    gt = json.loads((root / "instances_val2014_100.json").read_text())
    results = json.loads((root / f"instances_val2014_fake{iou_type}100_results.json").read_text())
    no_area = copy.deepcopy(gt)
    for ann in no_area["annotations"]:
        del ann["area"]
    assert main(_score(tmp_path, results, gt=no_area, iou_type=iou_type)) == 0
    ours = json.loads(capsys.readouterr().out)
    # the reference: pycocotools on the same ground truth with area filled the way loadRes fills results'
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    filled = copy.deepcopy(no_area)
    for ann in filled["annotations"]:
        ann["area"] = (ann["bbox"][2] * ann["bbox"][3] if iou_type == "bbox"
                       else _mask_area(ann["segmentation"], *sizes[ann["image_id"]]))
    assert any(abs(a["area"] - b["area"]) > 1 for a, b in zip(filled["annotations"], gt["annotations"]))
    np.testing.assert_allclose([ours[k] for k in KEYS], _pycocotools(filled, results, iou_type).stats, atol=1e-6)


def _crowded(num_objects: int = 150):
    """One 200x140 image with ``num_objects`` non-overlapping 10x10 boxes and perfect detections of them."""
    anns, results = [], []
    for i in range(num_objects):
        x, y = 13 * (i % 15), 13 * (i // 15)
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, 10, 10], "area": 100.0,
                     "iscrowd": 0})
        results.append({"image_id": 1, "category_id": 1, "bbox": [x, y, 10, 10], "score": 1.0 - i / 1000})
    gt = {"images": [{"id": 1, "width": 200, "height": 140}], "annotations": anns,
          "categories": [{"id": 1, "name": "cell"}]}
    return gt, results


def test_crowded_image_needs_a_larger_detection_limit(tmp_path, capsys):
    gt, results = _crowded(150)
    assert main(_score(tmp_path, results, gt=gt)) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["AP"] < 0.7 and default["AR100"] == pytest.approx(100 / 150)
    np.testing.assert_allclose([default[k] for k in KEYS], _pycocotools(gt, results, "bbox").stats, atol=1e-6)

    assert main(_score(tmp_path, results, gt=gt, extra=["--max-dets", "1", "10", "300"])) == 0
    crowded = json.loads(capsys.readouterr().out)
    assert list(crowded) == [*KEYS[:6], "AR1", "AR10", "AR300", *KEYS[9:]]
    assert crowded["AP"] == pytest.approx(1.0) and crowded["AR300"] == pytest.approx(1.0)
    ref = _pycocotools(gt, results, "bbox", max_dets=[1, 10, 300])
    assert ref.stats[0] == -1  # pycocotools' summarize looks for maxDets=100 for the headline AP
    precision = ref.eval["precision"][:, :, :, 0, -1]  # all areas, the largest limit
    assert crowded["AP"] == pytest.approx(float(np.mean(precision[precision > -1])), abs=1e-6)
    np.testing.assert_allclose([crowded[k] for k in list(crowded)[1:]], ref.stats[1:], atol=1e-6)


def test_bad_max_dets_is_a_config_error(tmp_path, capsys):
    line = cli_user_error(_score(tmp_path, [GOOD], extra=["--max-dets", "1", "100", "10"]), capsys)
    assert "--max-dets [1, 100, 10]: give three increasing positive integers" in line
