"""COCO json validation, the detection dataset and collation, on tiny generated data."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from cbsa_dense.data.coco_dataset import COCODetectionDataset, collate_detection, load_coco
from cbsa_dense.data.coco_validation import COCOFormatError, validate_coco
from cbsa_dense.data.det_transforms import DetectionTransform


def _crowd_counts() -> list[int]:
    """Uncompressed (column-major) RLE of a 10x10 square at x 40-49, y 20-29 in a 40x60 image."""
    mask = np.zeros((40, 60), np.uint8)
    mask[20:30, 40:50] = 1
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    return np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()


def _write_fixture(root):
    (root / "img").mkdir()
    for name, (h, w) in {"a.png": (40, 60), "b.png": (30, 30), "c.png": (50, 40)}.items():
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "img" / name)
    data = {
        "images": [{"id": 7, "file_name": "a.png", "height": 40, "width": 60},
                   {"id": 3, "file_name": "b.png", "height": 30, "width": 30},
                   {"id": 11, "file_name": "c.png", "height": 50, "width": 40}],
        "categories": [{"id": 9, "name": "nine"}, {"id": 4, "name": "four"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 9, "bbox": [10, 5, 20, 10], "area": 150.0, "iscrowd": 0,
             "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
            {"id": 2, "image_id": 7, "category_id": 4, "bbox": [40, 20, 10, 10], "area": 100.0, "iscrowd": 1,
             "segmentation": {"size": [40, 60], "counts": _crowd_counts()}},
            {"id": 5, "image_id": 11, "category_id": 4, "bbox": [0, 0, 40, 50], "area": 2000.0, "iscrowd": 0,
             "segmentation": [[0, 0, 40, 0, 40, 50, 0, 50]]},
        ],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return data


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0].update(image_id=99), "annotation id 1 refers to image_id 99"),
    (lambda d: d["annotations"][0].update(category_id=2), "annotation id 1 has category_id 2"),
    (lambda d: d["annotations"][2].update(bbox=[0, 0, 0, 50]), "annotation id 5 has a zero-area bbox"),
    (lambda d: d["annotations"][0].update(bbox=[50, 5, 20, 10]), "annotation id 1 has bbox .* outside its image a.png"),
    (lambda d: d["images"][1].update(file_name="gone.png"), "gone.png does not exist"),
])
def test_validation_errors_name_the_annotation_and_file(tmp_path, mutate, message):
    data = _write_fixture(tmp_path)
    mutate(data)
    with pytest.raises(COCOFormatError, match=message) as err:
        validate_coco(data, tmp_path / "ann.json", tmp_path / "img")
    assert "ann.json" in str(err.value)


def test_drop_invalid_logs_counts(tmp_path, caplog):
    data = _write_fixture(tmp_path)
    data["annotations"][0]["bbox"] = [0, 0, 5, 0]
    data["images"][1]["file_name"] = "gone.png"
    with caplog.at_level(logging.WARNING):
        clean, dropped = validate_coco(data, tmp_path / "ann.json", tmp_path / "img", drop_invalid=True)
    assert dropped == {"zero-area bbox": 1, "missing image file": 1}
    assert [a["id"] for a in clean["annotations"]] == [2, 5] and len(clean["images"]) == 2
    assert "dropped" in caplog.text and "zero-area bbox" in caplog.text


def test_dataset_train_and_eval_samples(tmp_path):
    _write_fixture(tmp_path)
    coco = load_coco(tmp_path / "ann.json", tmp_path / "img")
    ids = [4, 9]
    train = COCODetectionDataset(coco, tmp_path / "img", ids, DetectionTransform(64, train=False), train=True,
                                 with_masks=True, with_gt=False)
    assert train.image_ids == [7, 11]  # image 3 has no objects: skipped in training
    sample = train[0]
    assert sample["labels"].tolist() == [1]  # category 9 -> label 1; the crowd box is not a target
    assert sample["masks"].shape == (1, 64, 64)
    sy, sx = sample["scale"]
    assert (sy, sx) == (43 / 40, 64 / 60)  # the resize rounds 40 * 64 / 60 up to 43 rows
    np.testing.assert_allclose(sample["boxes"][0], np.array([10 * sx, 5 * sy, 30 * sx, 15 * sy]), atol=1e-3)
    ys, xs = np.nonzero(sample["masks"][0].numpy())
    assert abs(xs.min() - 10 * sx) <= 1.5 and abs(xs.max() + 1 - 30 * sx) <= 1.5
    assert abs(ys.min() - 5 * sy) <= 1.5 and abs(ys.max() + 1 - 15 * sy) <= 1.5

    evaluation = COCODetectionDataset(coco, tmp_path / "img", ids, DetectionTransform(64, train=False),
                                      train=False, with_masks=True)
    assert evaluation.image_ids == [3, 7, 11]  # sorted ids, the empty image kept
    gt = evaluation[1]["gt"]
    assert gt["iscrowd"].tolist() == [0, 1] and gt["labels"].tolist() == [1, 0]
    assert gt["boxes"].dtype == torch.float64 and gt["boxes"][0].tolist() == [10, 5, 30, 15]
    assert gt["masks"].shape == (2, 40, 60) and gt["masks"][1].sum() == 100  # RLE crowd region
    assert evaluation[0]["gt"]["boxes"].shape == (0, 4) and evaluation[0]["image_size"] == (64, 64)
    batch = collate_detection([evaluation[0], evaluation[1]])
    assert batch["image"].shape == (2, 3, 64, 64) and batch["image_id"] == [3, 7]
    assert batch["scale"] == [(64 / 30, 64 / 30), (43 / 40, 64 / 60)] and batch["image_size"][1] == (43, 64)


def test_image_size_mismatch_is_reported(tmp_path):
    data = _write_fixture(tmp_path)
    data["images"][0]["height"] = 41
    (tmp_path / "ann.json").write_text(json.dumps(data))
    coco = load_coco(tmp_path / "ann.json", tmp_path / "img")
    dataset = COCODetectionDataset(coco, tmp_path / "img", [4, 9], DetectionTransform(64, train=False), train=True)
    with pytest.raises(COCOFormatError, match="a.png is 60x40 but its json entry"):
        dataset[0]


def test_real_coco_annotations_pass_validation(shared_dir):
    path = shared_dir / "data" / "coco_val2014_100" / "instances_val2014_100.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = json.loads(path.read_text())
    clean, dropped = validate_coco(data, path)  # no image files there: the file check is skipped
    assert not dropped and len(clean["annotations"]) == len(data["annotations"]) == 839
