"""Tiled and native-size detection: tiles cover the image, objects cut by tile borders are found once and
whole, and the task's evaluation ``mode`` reaches the data, the checkpoint and ``cbsa_dense.load``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cbsa_dense.errors import ConfigError
from cbsa_dense.tasks.detection_limits import image_limit
from cbsa_dense.tasks.eval_protocol import DetEvaluation
from cbsa_dense.tasks.tiled_detection import detect_tiled, tile_grid, tile_starts

TILE, OVERLAP = 64, 24


@pytest.mark.parametrize("length", [10, 64, 65, 100, 256, 257])
def test_tiles_cover_the_side_with_at_least_the_overlap(length):
    starts = tile_starts(length, TILE, OVERLAP)
    assert starts[0] == 0 and starts[-1] == max(length - TILE, 0)
    for a, b in zip(starts, starts[1:]):
        assert a + TILE - b >= OVERLAP                        # neighbours share at least the overlap
    assert len(starts) == (1 if length <= TILE else int(np.ceil((length - TILE) / (TILE - OVERLAP))) + 1)


def _scene(size: int):
    """An image whose channel 0 holds object ids (0 = background) and the objects' boxes, none larger than
    the overlap; most straddle a tile border (tiles of a 256 side end at 64, 104, 144, 184, 224 and 256)."""
    boxes = [(55, 10, 75, 30), (95, 95, 115, 112), (135, 170, 152, 190), (175, 215, 195, 235), (215, 5, 235, 20),
             (20, 120, 35, 135), (240, 240, 256, 256)]
    image = torch.zeros(3, size, size)
    for i, (x0, y0, x1, y1) in enumerate(boxes, start=1):
        image[0, y0:y1, x0:x1] = i
    return image, boxes


def _pixel_detector(tiles, sizes):
    """Finds every object visible in a tile as the box of its visible pixels (a cut object gives a cut box)."""
    out = []
    for tile in tiles:
        ids = tile[0]
        found = []
        for value in ids.unique().tolist():
            if value == 0:
                continue
            ys, xs = torch.nonzero(ids == value, as_tuple=True)
            visible = len(ys) / 1e4
            found.append(([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1],
                          0.5 + visible))
        boxes = torch.tensor([b for b, _ in found], dtype=torch.float32).reshape(-1, 4)
        out.append({"boxes": boxes, "scores": torch.tensor([s for _, s in found]),
                    "labels": torch.zeros(len(found), dtype=torch.int64)})
    return out


def test_an_image_four_tiles_wide_finds_objects_across_tile_borders_exactly_once():
    image, truth = _scene(4 * TILE)
    crossing = [b for b in truth if any(b[0] < s + TILE < b[2] or b[1] < s + TILE < b[3]
                                        for s in tile_starts(4 * TILE, TILE, OVERLAP))]
    assert len(crossing) >= 5                                  # the scene tests what it claims
    result = detect_tiled(_pixel_detector, image, TILE, OVERLAP, nms_thresh=0.5, max_detections=None,
                          tiles_per_batch=3)
    found = sorted(tuple(int(v) for v in box) for box in result["boxes"].tolist())
    assert found == sorted(truth)                              # each object once, with its whole box


def test_without_the_ownership_rule_the_cut_boxes_would_survive_nms():
    """The check above can fail: NMS alone keeps the cut copies (their IoU with the whole box is low)."""
    from torchvision.ops import batched_nms

    image, truth = _scene(4 * TILE)
    boxes, scores = [], []
    for y0, x0, *_ in tile_grid(4 * TILE, 4 * TILE, TILE, OVERLAP):
        det = _pixel_detector(image[None, :, y0:y0 + TILE, x0:x0 + TILE], None)[0]
        boxes.append(det["boxes"] + torch.tensor([x0, y0, x0, y0]))
        scores.append(det["scores"])
    boxes, scores = torch.cat(boxes), torch.cat(scores)
    keep = batched_nms(boxes, scores, torch.zeros(len(boxes), dtype=torch.int64), 0.5)
    assert len(keep) > len(truth)


def test_the_detection_limit_keeps_the_best():
    image, truth = _scene(4 * TILE)
    result = detect_tiled(_pixel_detector, image, TILE, OVERLAP, nms_thresh=0.5, max_detections=3)
    assert len(result["boxes"]) == 3 and result["scores"].tolist() == sorted(result["scores"].tolist(), reverse=True)


@pytest.mark.parametrize(("mode", "overlap", "message"), [
    ("tile", None, "evaluation mode='tile' is invalid: give one of resize, native, windowed, tiled"),
    ("tiled", 32, "evaluation tile_overlap=32 is invalid"),
    ("tiled", -1, "evaluation tile_overlap=-1 is invalid"),
])
def test_bad_eval_settings_name_the_value(mode, overlap, message):
    with pytest.raises(ConfigError, match=message):
        DetEvaluation(mode=mode, image_size=64, tile_overlap=overlap).overlap()


def test_default_overlap_is_a_quarter_tile():
    assert DetEvaluation(mode="tiled", image_size=336).overlap() == 84
    assert DetEvaluation(mode="tiled", image_size=336).tile == (336, 84)
    assert DetEvaluation(mode="native", image_size=336).tile is None


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory):
    from cbsa_dense.cli import main

    root = tmp_path_factory.mktemp("tiled")
    assert main(["fit", "--config", "demo_det.yaml", "--data.root", str(root / "data"), "--data.num_train", "4",
                 "--data.num_val", "2", "--data.batch_size", "2", "--data.num_workers", "0",
                 "--data.size_range", "[200, 260]", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root / "runs"),
                 "--trainer.logger.init_args.save_dir", str(root / "runs"),
                 "--model.init_args.evaluation.mode", "tiled",
                 "--model.init_args.evaluation.tile_overlap", "24"]) == 0
    return next((root / "runs").rglob("last.ckpt")), root / "data"


def test_tiled_mode_travels_with_the_checkpoint_to_predict_and_load(demo_ckpt, tmp_path, monkeypatch, capsys):
    import cbsa_dense
    from cbsa_dense.cli import main

    ckpt, data = demo_ckpt
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["evaluation"]
    assert (stored["mode"], stored["image_size"], stored["tile_overlap"]) == ("tiled", 128, 24)   # resolved
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["predict", "--ckpt_path", str(ckpt), "--data", "DemoDetectionDataModule", "--data.root", str(data),
                 "--data.num_train", "4", "--data.num_val", "2", "--data.num_workers", "0",
                 "--data.eval_batch_size", "1", "--model.init_args.results_dir", "out",
                 "--trainer.enable_progress_bar", "false"]) == 0
    err = capsys.readouterr().err
    assert (f"evaluation protocol (stored in {ckpt} unless set by a config or the command line): tiled: 128 px "
            "tiles overlapping by 24 px; max_detection_thresholds [1, 10, 100]") in err
    written = json.loads(open("out/predictions.json").read())
    model = cbsa_dense.load(ckpt)
    assert (model.mode, model.tile_overlap) == ("tiled", 24)
    images = json.loads((data / "annotations" / "instances_val.json").read_text())["images"]
    assert min(i["width"] for i in images) > 128                  # larger than a tile: tiling happened
    for info in images:
        result = model.predict(data / "val" / info["file_name"])
        limit = image_limit(model.task.model.head.detections_per_img, 128, info["height"], info["width"])
        assert limit > model.task.model.head.detections_per_img and len(result["scores"]) <= limit
        assert result["at_limit"] is (len(result["scores"]) == limit)
        mine = sorted(zip(result["scores"].tolist(), result["boxes"][:, 0].tolist()))
        theirs = sorted((e["score"], e["bbox"][0]) for e in written if e["image_id"] == info["id"])
        np.testing.assert_allclose(np.array(mine).reshape(-1, 2), np.array(theirs).reshape(-1, 2), atol=1e-4)


def test_native_mode_feeds_the_original_size(demo_ckpt):
    from cbsa_dense.data.demo_det import DemoDetectionDataModule

    _, data = demo_ckpt
    module = DemoDetectionDataModule(root=str(data), num_train=4, num_val=2, num_workers=0, eval_batch_size=2,
                                     evaluation=DetEvaluation(mode="native"))
    module.setup("validate")
    batch = next(iter(module.val_dataloader()))
    images = json.loads((data / "annotations" / "instances_val.json").read_text())["images"]
    assert [tuple(s) for s in batch["image_size"]] == [(i["height"], i["width"]) for i in images]
    assert batch["scale"] == [(1.0, 1.0)] * 2 and "tile" not in batch


def test_native_training_crops_keep_the_objects_pixel_size():
    from cbsa_dense.data.det_transforms import DetectionTransform

    image = np.zeros((400, 500, 3), np.uint8)
    box = np.array([[100.0, 100.0, 140.0, 150.0]])
    native = DetectionTransform(224, train=True, scale_range=(1.0, 1.0), hflip=0.0, native=True)
    resized = DetectionTransform(224, train=True, scale_range=(1.0, 1.0), hflip=0.0)
    sizes = {}
    for name, transform in (("native", native), ("resize", resized)):
        for seed in range(20):                         # random crops: keep one that holds the box
            transform.set_random_seed(seed)
            out = transform(image, box, np.array([0]), [])
            if len(out["boxes"]):
                sizes[name] = out["boxes"][0, 2:] - out["boxes"][0, :2]
                break
        assert out["image"].shape == (3, 224, 224)
    np.testing.assert_allclose(sizes["native"], [40, 50], atol=1)               # as in the photo
    np.testing.assert_allclose(sizes["resize"], [40 * 224 / 500, 50 * 224 / 500], atol=1)


def test_native_training_needs_native_or_tiled_evaluation(tmp_path):
    from cbsa_dense.data.coco_datamodule import COCODetectionDataModule

    with pytest.raises(ConfigError, match="train_mode native .* set model evaluation mode native, windowed or tiled"):
        COCODetectionDataModule(root=str(tmp_path), image_size=224, train_mode="native")
    with pytest.raises(ConfigError, match="train_mode='crop' is invalid"):
        COCODetectionDataModule(root=str(tmp_path), image_size=224, train_mode="crop")
    COCODetectionDataModule(root=str(tmp_path), image_size=224, train_mode="native",
                            evaluation=DetEvaluation(mode="tiled"))


def test_load_refuses_to_shrink_images_for_a_model_trained_at_native_size(demo_ckpt):
    import cbsa_dense

    model = cbsa_dense.load(demo_ckpt[0])
    model.task.data_info["train_mode"] = "native"
    model.mode = "native"
    with pytest.raises(ConfigError, match="trained on objects at their own pixel size"):
        model.mode = "resize"
    assert model.mode == "native" and model.evaluation.mode == "native"      # a refused setting changes nothing


def test_native_scale_enlarges_training_crops_and_evaluation_alike(demo_ckpt):
    import cbsa_dense
    from cbsa_dense.data.det_transforms import DetectionTransform

    box = np.array([[100.0, 100.0, 140.0, 150.0]])
    train = DetectionTransform(224, train=True, scale_range=(1.0, 1.0), hflip=0.0, native=True, native_scale=2.0)
    for seed in range(40):
        train.set_random_seed(seed)
        out = train(np.zeros((400, 500, 3), np.uint8), box, np.array([0]), [])
        if len(out["boxes"]) and (out["boxes"][0, 2:] - out["boxes"][0, :2] > 60).all():
            break
    np.testing.assert_allclose(out["boxes"][0, 2:] - out["boxes"][0, :2], [80, 100], atol=1)
    evaluation = DetectionTransform(224, train=False, native=True, native_scale=2.0)
    out = evaluation(np.zeros((100, 150, 3), np.uint8), box, np.array([0]), [])
    assert out["image"].shape == (3, 200, 300) and out["scale"] == (2.0, 2.0) and out["image_size"] == (200, 300)
    model = cbsa_dense.load(demo_ckpt[0])
    model.native_scale = 2.0
    assert model.describe() == ("tiled: 128 px tiles overlapping by 24 px, scaled by 2; "
                                "max_detection_thresholds [1, 10, 100]")
    image = np.random.default_rng(0).integers(0, 255, (150, 170, 3), dtype=np.uint8)
    result = model.predict(image)                        # boxes come back in the photo's pixels
    assert len(result["boxes"]) and result["boxes"][:, 2].max() <= 170 and result["boxes"][:, 3].max() <= 150
