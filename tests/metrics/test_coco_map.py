"""COCO mAP wrapper against pycocotools on generated and real (shared) data."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cbsa_dense.metrics.coco_map import (
    COCO_STATS,
    COCOMeanAveragePrecision,
    coco_to_metric_inputs,
    evaluate_coco,
)


def _gt_dataset(rng: np.random.Generator, first_ann_id: int = 1, num_images: int = 6) -> dict:
    """Random COCO ground truth: sparse category ids, a crowd region, an image without annotations."""
    images, anns = [], []
    ann_id = first_ann_id
    for i in range(num_images):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        image_id = 10 * (num_images - i)  # ids not in file order
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id}.jpg"})
        if i == 2:
            continue  # image without objects
        for k in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
            bw, bh = rng.uniform(5, w - x), rng.uniform(5, h - y)
            poly = [x, y, x + bw, y, x + bw / 2, y + bh]
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            anns.append({"id": ann_id, "image_id": image_id, "category_id": int(rng.choice([3, 7, 12])),
                         "bbox": [x, y, bw, bh], "segmentation": [poly], "area": float(mask_utils.area(rle)),
                         "iscrowd": int(i == 1 and k == 0)})
            ann_id += 1
    cats = [{"id": c, "name": f"c{c}"} for c in (3, 7, 12)]
    return {"images": images, "annotations": anns, "categories": cats}


def _to_rle(segm, h, w):
    rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    rle["counts"] = rle["counts"].decode()
    return rle


def _results(gt: dict, rng: np.random.Generator, noise: float) -> list[dict]:
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    out = []
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        h, w = sizes[a["image_id"]]
        jitter = rng.normal(0, noise, 4) if noise else np.zeros(4)
        box = (np.asarray(a["bbox"]) + jitter).tolist()
        poly = [(np.asarray(a["segmentation"][0]) + rng.normal(0, noise, 6) if noise else a["segmentation"][0])]
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box,
                    "segmentation": _to_rle([list(map(float, poly[0]))], h, w),
                    "score": float(rng.uniform(0.1, 1.0)) if noise else 0.9})
    if noise:  # false positives, one on the image without objects
        for im in gt["images"][:3]:
            out.append({"image_id": im["id"], "category_id": 7, "bbox": [1.0, 2.0, 30.0, 20.0],
                        "segmentation": _to_rle([[1.0, 2.0, 31.0, 2.0, 31.0, 22.0]], im["height"], im["width"]),
                        "score": 0.95})
    return out


def _pycocotools(gt: dict, results: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(json.loads(json.dumps(results))), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def _coco(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(dataset))
        coco.createIndex()
    return coco


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1])
def test_generated_cases_match_pycocotools(iou_type, seed):
    rng = np.random.default_rng(seed)
    gt = _gt_dataset(rng)
    results = _results(gt, rng, noise=3.0)
    if iou_type == "segm":  # pycocotools' loadRes scores results carrying a bbox with the box area
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    ours = evaluate_coco(_coco(gt), results, iou_type)
    ref = _pycocotools(gt, results, iou_type)
    assert 0.0 < ours["AP"] < 1.0
    np.testing.assert_allclose([ours[k] for k in COCO_STATS], ref, atol=1e-6)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_predictions_give_ap_one_with_ids_from_one(iou_type):
    gt = _gt_dataset(np.random.default_rng(3))
    results = _results(gt, np.random.default_rng(0), noise=0.0)
    ours = evaluate_coco(_coco(gt), results, iou_type)
    assert ours["AP"] == pytest.approx(1.0, abs=1e-6)
    assert _pycocotools(gt, results, iou_type)[0] == pytest.approx(1.0)


def test_annotation_id_zero_is_a_pycocotools_quirk_we_do_not_copy():
    gt = _gt_dataset(np.random.default_rng(3), first_ann_id=0)
    results = _results(gt, np.random.default_rng(0), noise=0.0)
    assert _pycocotools(gt, results, "bbox")[0] < 1.0
    assert evaluate_coco(_coco(gt), results, "bbox")["AP"] == pytest.approx(1.0, abs=1e-6)


def test_tensor_inputs_in_xyxy_equal_json_path():
    """The task's path (xyxy tensors per batch) gives the same numbers as the json path."""
    rng = np.random.default_rng(5)
    gt = _gt_dataset(rng)
    results = _results(gt, rng, noise=2.0)
    metric = COCOMeanAveragePrecision(iou_types="bbox")
    for preds, targets in coco_to_metric_inputs(_coco(gt), results):
        for item in preds + targets:
            item["boxes"] = torch.cat([item["boxes"][:, :2], item["boxes"][:, :2] + item["boxes"][:, 2:]], 1)
        metric.update(preds, targets)
    np.testing.assert_allclose([metric.coco_stats()[k] for k in COCO_STATS], _pycocotools(gt, results, "bbox"),
                               atol=1e-6)


def test_bad_arguments_and_results_are_named():
    with pytest.raises(ValueError, match="iou_types"):
        COCOMeanAveragePrecision(iou_types="keypoints")
    gt = _gt_dataset(np.random.default_rng(0))
    with pytest.raises(ValueError, match="image_id 999"):
        evaluate_coco(_coco(gt), [{"image_id": 999, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="not computed"):
        COCOMeanAveragePrecision().coco_stats({}, iou_type="segm")


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_shared_coco_val2014_100_matches_pycocotools(shared_dir, iou_type):
    root = shared_dir / "data" / "coco_val2014_100"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    gt = json.loads((root / "instances_val2014_100.json").read_text())
    results = json.loads((root / f"instances_val2014_fake{iou_type}100_results.json").read_text())
    ours = evaluate_coco(_coco(gt), results, iou_type)
    np.testing.assert_allclose([ours[k] for k in COCO_STATS], _pycocotools(gt, results, iou_type), atol=1e-6)


def test_detection_limits_are_configurable_and_checked():
    from cbsa_dense.errors import ConfigError
    from cbsa_dense.metrics.coco_map import stat_keys

    metric = COCOMeanAveragePrecision(max_detection_thresholds=[1, 10, 300])
    assert metric.max_detection_thresholds == [1, 10, 300]
    assert list(stat_keys([1, 10, 300]))[6:9] == ["AR1", "AR10", "AR300"] and stat_keys() == COCO_STATS
    gt, results = _gt_dataset(np.random.default_rng(0)), []
    for preds, targets in coco_to_metric_inputs(_coco(gt), results):
        metric.update(preds, targets)
    assert "AR300" in metric.coco_stats()
    for bad in ([10, 1, 100], [1, 10], [0, 1, 2], [1, 10, 100.5]):
        with pytest.raises(ConfigError, match="max_detection_thresholds"):
            COCOMeanAveragePrecision(max_detection_thresholds=bad)
