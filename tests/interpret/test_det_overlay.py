"""Detection pictures: boxes where they are, nothing below the threshold, predict overlays at the original
size, and validation pictures with ground truth beside predictions."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from cbsa_dense.data.seg_labels import default_palette
from cbsa_dense.interpret.det_overlay import (
    PANEL_GAP,
    draw_detections,
    draw_ground_truth,
    font_size,
    line_width,
    side_by_side,
)

GREY = 128


def _grey(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), GREY, dtype=np.uint8)


def _has_colour(picture: np.ndarray, y: int, x: int, colour, slack: int = 1) -> bool:
    """``colour`` within ``slack`` pixels of (y, x)."""
    window = picture[max(y - slack, 0):y + slack + 1, max(x - slack, 0):x + slack + 1].reshape(-1, 3)
    return bool((window == np.asarray(colour, dtype=np.uint8)).all(axis=1).any())


def test_a_box_is_drawn_where_it_is_and_nothing_below_the_threshold():
    image = _grey(200, 300)
    colours = default_palette(2)
    boxes = torch.tensor([[50.0, 60.0, 150.0, 140.0], [200.0, 20.0, 260.0, 80.0]])
    drawn = draw_detections(image, boxes, torch.tensor([0.9, 0.2]), torch.tensor([0, 1]), ["tree", "car"], 0.3)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == GREY).all(), "the input is not modified"
    for y, x in ((100, 50), (100, 150), (60, 100), (140, 100)):          # the four sides of the kept box
        assert _has_colour(drawn, y, x, colours[0]), (y, x)
    assert (drawn[70:130, 60:140] == GREY).all(), "the inside of a box stays clear"
    changed = (drawn != GREY).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 50 and xs.max() <= 150 and ys.max() <= 140, "only the kept box and its label are drawn"
    assert ys.min() >= 60 - 2 * font_size(200, 300), "its label sits just above it"
    assert not changed[:, 190:].any(), "the box scoring 0.2 < 0.3 is not drawn"
    assert (draw_detections(image, boxes, torch.tensor([0.9, 0.2]), torch.tensor([0, 1]), None, 0.95) == GREY).all()
    at_threshold = draw_detections(image, boxes[1:], torch.tensor([0.3]), torch.tensor([1]), None, 0.3)
    assert _has_colour(at_threshold, 50, 200, colours[1]), "a score equal to the threshold is drawn"


def test_tiny_and_crowded_boxes_stay_readable():
    rng = np.random.default_rng(0)
    image = _grey(400, 400)
    corners = rng.uniform(0, 380, (300, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(3, 60, (300, 2))], axis=1)
    drawn = draw_detections(image, boxes, rng.uniform(0.5, 1, 300), rng.integers(0, 5, 300), None, 0.3)
    assert (drawn == GREY).all(axis=2).mean() > 0.3, "300 thin boxes leave most of a 400 px image visible"
    small = draw_detections(image, [[100, 100, 105, 105]], [0.9], [0], ["tree"], 0.3)
    assert not (small[:95] != GREY).any(), "a box smaller than a text line gets no label"
    assert line_width(400, 400) == 1 and line_width(1875, 2500) > 1
    assert 11 <= font_size(300, 400) < font_size(1875, 2500) <= 60


def test_ground_truth_panel_beside_predictions():
    image = _grey(60, 80)
    colours = default_palette(3)
    gt = [[10.0, 20.0, 50.0, 50.0]]
    picture = side_by_side(image, gt, [2], [[30.0, 5.0, 70.0, 40.0], [0.0, 0.0, 8.0, 8.0]], [0.8, 0.1], [1, 0],
                           ["a", "b", "c"], score_threshold=0.5)
    factor = math.ceil(384 / 80)
    panel_h, panel_w = 60 * factor, 80 * factor
    assert picture.shape[1] == 2 * panel_w + PANEL_GAP
    strip = picture.shape[0] - panel_h
    assert strip > 0
    left = picture[strip:, :panel_w]
    right = picture[strip:, panel_w + PANEL_GAP:]
    assert _has_colour(left, 35 * factor, 10 * factor, colours[2]) and _has_colour(left, 50 * factor, 30 * factor, colours[2])
    assert not (left == colours[1]).all(axis=2).any(), "predictions stay off the ground-truth panel"
    assert _has_colour(right, 25 * factor, 70 * factor, colours[1]) and not (right == colours[2]).all(axis=2).any()
    assert not (right[:, : 8 * factor + 2] == colours[0]).all(axis=2).any(), "the prediction under 0.5 is left out"
    gt_only = draw_ground_truth(image, gt, [2], ["a", "b", "c"])
    assert _has_colour(gt_only, 35, 10, colours[2])


# ------------------------------------------------------------------------- task and callback, end to end
@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    from cbsa_dense.data.demo_det import generate_demo_coco

    return generate_demo_coco(tmp_path_factory.mktemp("coco"), num_train=2, num_val=3, size_range=(40, 72))


def _task(**kwargs):
    from cbsa_dense.models.encoders import ViTEncoder
    from cbsa_dense.models.heads.det_fcos import FCOSHead
    from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid
    from cbsa_dense.tasks.detection import DetectionTask

    torch.manual_seed(0)
    return DetectionTask(ViTEncoder(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2),
                         partial(SimpleFeaturePyramid, out_channels=32, strides=(8, 16, 32)),
                         partial(FCOSHead, num_convs=1), num_classes=3, **kwargs)


def _data(coco_root):
    from cbsa_dense.data.coco_datamodule import COCODetectionDataModule

    return COCODetectionDataModule(root=str(coco_root), val_json="annotations/instances_val.json", val_images="val",
                                   image_size=64, batch_size=2, eval_batch_size=2, num_workers=0)


def _trainer(tmp_path, callbacks=()) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path), name="csv"), callbacks=list(callbacks),
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))


def test_predict_writes_one_overlay_per_image_at_its_original_size(tmp_path, coco_root):
    import json

    data = _data(coco_root)
    task = _task(results_dir=str(tmp_path / "results"), overlay_score_threshold=0.0)
    _trainer(tmp_path).predict(task, datamodule=data)
    images = json.loads((coco_root / "annotations" / "instances_val.json").read_text())["images"]
    overlays = sorted((tmp_path / "results" / "overlays").iterdir())
    assert [p.name for p in overlays] == sorted(f"{im['file_name'].rsplit('.', 1)[0]}.png" for im in images)
    for info in images:
        picture = np.asarray(Image.open(tmp_path / "results" / "overlays" / (info["file_name"].rsplit(".", 1)[0] + ".png")))
        original = np.asarray(Image.open(coco_root / "val" / info["file_name"]).convert("RGB"))
        assert picture.shape == original.shape == (info["height"], info["width"], 3)
        assert (picture != original).any(), "threshold 0: every detection is drawn"
    assert (tmp_path / "results" / "predictions.json").is_file()

    quiet = _task(results_dir=str(tmp_path / "quiet"), overlays=False)
    _trainer(tmp_path).predict(quiet, datamodule=_data(coco_root))
    assert (tmp_path / "quiet" / "predictions.json").is_file() and not (tmp_path / "quiet" / "overlays").exists()
    assert "overlays" not in quiet.hparams and "overlay_score_threshold" not in quiet.hparams


def test_validation_picture_has_ground_truth_beside_predictions(tmp_path, coco_root):
    from cbsa_dense.callbacks import PredictionImages

    data = _data(coco_root)
    task = _task()
    trainer = _trainer(tmp_path, [PredictionImages(num_images=2, score_threshold=0.3)])
    trainer.validate(task, datamodule=data)
    pictures = sorted(tmp_path.rglob("val_predictions/*.png"))
    assert [p.name for p in pictures] == ["epoch000_0.png", "epoch000_1.png"]
    colours = default_palette(3)
    checked = 0
    for index, path in enumerate(pictures):
        sample = data.datasets["val"][index]
        h, w = sample["image_size"]
        sy, sx = sample["scale"]
        factor = math.ceil(384 / max(h, w))
        picture = np.asarray(Image.open(path).convert("RGB"))
        assert picture.shape[1] == 2 * w * factor + PANEL_GAP, "two panels of the unpadded input"
        strip = picture.shape[0] - h * factor
        left = picture[strip:, : w * factor]
        gt = sample["gt"]
        for (x0, y0, x1, y1), label, crowd in zip(gt["boxes"].tolist(), gt["labels"].tolist(), gt["iscrowd"].tolist()):
            if crowd:
                continue
            x0, x1 = x0 * sx * factor, x1 * sx * factor                   # original -> input -> picture pixels
            y0, y1 = y0 * sy * factor, y1 * sy * factor
            ym, xm = round((y0 + y1) / 2), round((x0 + x1) / 2)
            sides = [(ym, round(x0)), (ym, round(x1)), (round(y0), xm), (round(y1), xm)]
            hits = sum(_has_colour(left, y, x, colours[label], slack=2) for y, x in sides)
            assert hits >= 3, f"ground-truth box of {path.name} not drawn at its place ({hits}/4 sides)"
            checked += 1
    assert checked, "the drawn images hold ground-truth boxes"
