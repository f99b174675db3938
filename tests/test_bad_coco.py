"""Bad COCO jsons (issue #10, "trust at the boundaries"): each problem fails with one line that names the
file, the entry (image / annotation / category id) and the value, or is dropped with a logged count where
``drop_invalid`` allows; nothing is silently trained on. The jsons are plain COCO dicts written here."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cbsa_dense.cli import main
from cbsa_dense.data.coco_dataset import load_coco
from cbsa_dense.data.coco_validation import COCOFormatError
from cbsa_dense.data.det_transforms import DetectionTransform
from cbsa_dense.errors import DataError
from tests.conftest import cli_user_error

CATEGORIES = [{"id": 3, "name": "box"}, {"id": 8, "name": "bar"}]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()}


def _write_split(root: Path, split: str, num_images: int, first_image_id: int, first_ann_id: int) -> dict:
    """Images with one or two filled rectangles and a plain COCO instances dict describing them."""
    (root / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(first_image_id)
    images, anns = [], []
    ann_id = first_ann_id
    for i in range(num_images):
        h, w = 48, 56
        image_id = first_image_id + 2 * i
        pixels = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        for k, (category, (x, y, bw, bh)) in enumerate([(3, (4 + i, 6, 16, 14)), (8, (30, 20 + i, 20, 8))]):
            pixels[y:y + bh, x:x + bw] = 200 if k == 0 else 120
            mask = np.zeros((h, w), np.uint8)
            mask[y:y + bh, x:x + bw] = 1
            segmentation = ([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]] if k == 0 else _uncompressed_rle(mask))
            anns.append({"id": ann_id, "image_id": image_id, "category_id": category, "bbox": [x, y, bw, bh],
                         "area": float(bw * bh), "iscrowd": 0, "segmentation": segmentation})
            ann_id += 1
        name = f"{image_id:05d}.png"
        Image.fromarray(pixels).save(root / split / name)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    data = {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return data


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_coco")
    _write_split(root, "train", 3, 10, 1)
    _write_split(root, "val", 2, 40, 100)
    return root


def _config(tmp_path: Path, root: Path, train_json: str = "annotations/train.json", **data_args) -> str:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "limit_val_batches": 1,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
                    "log_every_n_steps": 1, "default_root_dir": str(tmp_path / "run"),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "run"), "name": "csv"}}},
        "model": {"class_path": "cbsa_dense.tasks.detection.DetectionTask", "init_args": {
            "results_dir": str(tmp_path / "results"),
            "encoder": {"class_path": "cbsa_dense.models.encoders.ViTEncoder", "init_args": {
                "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                "attn_layer": {"class_path": "cbsa_dense.layers.CBSAAttention", "init_args": {"grid": [2, 2]}}}},
            "neck": {"class_path": "cbsa_dense.models.necks.simple_fpn.SimpleFeaturePyramid",
                     "init_args": {"out_channels": 32, "strides": [8, 16, 32]}},
            "head": {"class_path": "cbsa_dense.models.heads.det_fcos.FCOSHead", "init_args": {"num_convs": 1}}}},
        "data": {"class_path": "cbsa_dense.data.coco_datamodule.COCODetectionDataModule", "init_args": {
            "root": str(root), "train_json": train_json, "train_images": "train",
            "val_json": "annotations/val.json", "val_images": "val", "image_size": 64, "batch_size": 2,
            "num_workers": 0, **data_args}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _bad_train_json(root: Path, tmp_path: Path, mutate, raw: str | None = None) -> str:
    """A mutated copy of the training json, as a path relative to ``root``."""
    data = json.loads((root / "annotations" / "train.json").read_text())
    if mutate is not None:
        mutate(data)
    path = tmp_path / "bad_train.json"
    path.write_text(raw if raw is not None else json.dumps(data))
    return str(path)  # absolute: root / absolute == absolute


def _ann(index: int, **values):
    return lambda d: d["annotations"][index].update(**values)


# ----------------------------------------------------------------------------------- through the real CLI
@pytest.mark.parametrize("mutate, raw, expected", [
    (_ann(0, bbox=[4, 6, float("nan"), 14]), None, "annotation id 1 has bbox [4, 6, nan, 14]: value nan is not a "
                                                   "finite number"),
    (lambda d: d["images"].append({**d["images"][0], "file_name": d["images"][1]["file_name"]}), None,
     "image id 10 is declared twice (images #0 and #3, files '00010.png' and '00012.png')"),
    (_ann(1, id=1), None, "annotation id 1 is used twice (annotations #0 and #1)"),
    (lambda d: d["categories"].append({"id": 8, "name": "again"}), None,
     "category id 8 is declared twice (categories #1 and #2)"),
    (lambda d: d["images"][0].update(file_name="../val/00040.png"), None,
     "image id 10 has file_name '../val/00040.png', which is outside the image folder"),
    (None, '{"images": [\n  {"id": 1,}\n]}', "invalid JSON at line 2, column 12"),
    (None, "[]", "the top level is a JSON array, not an object"),
])
def test_fit_rejects_bad_training_json_with_one_line(tmp_path, coco_root, capsys, mutate, raw, expected):
    bad = _bad_train_json(coco_root, tmp_path, mutate, raw)
    line = cli_user_error(["fit", "--config", _config(tmp_path, coco_root, train_json=bad)], capsys)
    assert f"{bad}: " in line and expected in line
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").rglob("*.ckpt"))


def test_fit_with_everything_dropped_fails_instead_of_exiting_0(tmp_path, coco_root, capsys):
    def every_box_nan(data):
        for ann in data["annotations"]:
            ann["bbox"][2] = float("nan")
    bad = _bad_train_json(coco_root, tmp_path, every_box_nan)
    line = cli_user_error(["fit", "--config", _config(tmp_path, coco_root, train_json=bad, drop_invalid=True)], capsys)
    assert (f"{bad}: no training image left: the file has 3 images and 6 annotations; dropped 6 x malformed bbox; "
            "of the 3 images kept, 3 have no annotation") in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_bad_mask_annotations_fail_when_masks_are_used(tmp_path, coco_root, capsys):
    bad = _bad_train_json(coco_root, tmp_path, _ann(0, segmentation=[[4, 6, 20, 6]]))
    line = cli_user_error(["fit", "--config", _config(tmp_path, coco_root, train_json=bad, with_masks=True)], capsys)
    assert f"{bad}: annotation id 1 (image 00010.png): polygon [4, 6, 20, 6] has 2 points, fewer than the 3" in line


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, coco_root) -> tuple[Path, Path]:
    """One training step of a tiny FCOS through the CLI, with crowded-scene detection limits."""
    run = tmp_path_factory.mktemp("tiny_det")
    config = _config(run, coco_root)
    assert main(["fit", "--config", config,
                 "--model.init_args.evaluation.max_detection_thresholds", "[1, 10, 300]"]) == 0
    return next((run / "run").rglob("*.ckpt")), run


def test_metric_limits_reach_the_logged_metrics(tiny_ckpt):
    _, run = tiny_ckpt
    header = next((run / "run").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert "val_mar_300" in header and "val_mar_100" not in header


def test_predict_from_an_images_only_json(tmp_path, coco_root, tiny_ckpt):
    ckpt, _ = tiny_ckpt
    val = json.loads((coco_root / "annotations" / "val.json").read_text())
    images_only = tmp_path / "to_predict.json"
    images_only.write_text(json.dumps({"images": val["images"]}))  # no annotations, no categories
    assert main(["predict", "--ckpt_path", str(ckpt), "--data", "cbsa_dense.data.coco_datamodule.COCODetectionDataModule",
                 "--data.init_args.predict_json", str(images_only), "--data.init_args.predict_images",
                 str(coco_root / "val"), "--data.init_args.image_size", "64", "--data.init_args.num_workers", "0",
                 "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(tmp_path / "out"),
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]) == 0
    predictions = json.loads(next((tmp_path / "out").rglob("predictions.json")).read_text())
    assert predictions and {p["image_id"] for p in predictions} <= {40, 42}
    assert {p["category_id"] for p in predictions} <= {3, 8}  # the checkpoint's category ids


# ------------------------------------------------------------------------------------------ load_coco
def _fixture(tmp_path: Path) -> tuple[dict, Path]:
    data = _write_split(tmp_path, "img", 2, 10, 1)
    return data, tmp_path / "annotations" / "img.json"


def _load(path: Path, data: dict, **kwargs):
    path.write_text(json.dumps(data))
    return load_coco(path, path.parent.parent / "img", **kwargs)


@pytest.mark.parametrize("mutate, expected", [
    (_ann(0, bbox=[4, None, 16, 14]), "annotation id 1 has bbox [4, None, 16, 14]: value None is not a finite number"),
    (_ann(0, bbox=[4, "6", 16, 14]), "annotation id 1 has bbox [4, '6', 16, 14]: value '6' is not a finite number"),
    (_ann(0, bbox=[4, 6, 16]), "annotation id 1 has bbox [4, 6, 16]: expected [x, y, w, h]"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotation id 1 has bbox None (missing)"),
    (_ann(0, segmentation=[[4, 6, 20, 6, 20, 20, 4]]), "annotation id 1 (image 00010.png): polygon "
                                                       "[4, 6, 20, 6, 20, 20, 4] has an odd number (7) of coordinates"),
    (_ann(1, segmentation={"size": [49, 56], "counts": [49 * 56]}),
     "annotation id 2 (image 00010.png): RLE size [49, 56] (height, width) differs from its image's 48x56"),
    (_ann(0, area=float("nan")), "annotation id 1 has area nan, expected a non-negative number"),
    (_ann(0, iscrowd=None), "annotation id 1 has iscrowd None, expected 0 or 1"),
    (_ann(0, category_id=float("nan")), "annotation id 1 has category_id nan, which is not in 'categories' [3, 8]"),
    (lambda d: d["images"][0].update(file_name="/etc/passwd"), "image id 10 has file_name '/etc/passwd', which is "
                                                               "outside the image folder"),
    (lambda d: d["images"][0].update(id="10"), "image #0 has id '10', expected an integer id"),
    (lambda d: d["images"][0].update(height=None), "image id 10 has height None, expected a positive integer"),
    (lambda d: d["annotations"].append([1, 2]), "annotation #4 is a JSON array ([1, 2]), expected an object"),
    (lambda d: d.pop("annotations"), "missing key 'annotations'"),
    (lambda d: d.update(images={"id": 1}), "'images' is a JSON object, expected an array of objects"),
    (lambda d: d.update(categories=[]), "'categories' is empty"),
])
def test_load_coco_names_file_entry_and_value(tmp_path, mutate, expected):
    data, path = _fixture(tmp_path)
    mutate(data)
    with pytest.raises(COCOFormatError) as err:
        _load(path, data, check_masks=True)
    message = str(err.value)
    assert isinstance(err.value, DataError) and "\n" not in message
    assert message.startswith(f"{path}: ") and expected in message, message


def test_drop_invalid_drops_and_counts_per_annotation_problems(tmp_path, caplog):
    data, path = _fixture(tmp_path)
    data["annotations"][0]["bbox"][1] = None
    data["annotations"][1]["segmentation"]["size"] = [10, 10]
    data["annotations"][1]["segmentation"]["counts"] = [100]
    data["annotations"][2]["segmentation"] = [[1, 2, 3, 4]]
    with caplog.at_level(logging.WARNING):
        coco = _load(path, data, drop_invalid=True, check_masks=True)
    assert sorted(coco.anns) == [4]
    assert coco.dropped == {"malformed bbox": 1, "segmentation size differs from image": 1,
                            "malformed segmentation": 1}
    assert "dropped 1 x malformed bbox" in caplog.text
    # masks unused: segmentation is not checked, the bad box still is
    assert sorted(_load(path, data, drop_invalid=True).anns) == [2, 3, 4]


def test_structural_problems_are_errors_even_with_drop_invalid(tmp_path):
    data, path = _fixture(tmp_path)
    data["annotations"][1]["id"] = 1
    with pytest.raises(COCOFormatError, match="annotation id 1 is used twice"):
        _load(path, data, drop_invalid=True)


def test_outside_root_needs_the_explicit_flag(tmp_path):
    data, path = _fixture(tmp_path)
    data["images"][0]["file_name"] = f"../img/{data['images'][0]['file_name']}"
    with pytest.raises(COCOFormatError, match="allow_outside_root: true"):
        _load(path, data)
    assert sorted(_load(path, data, allow_outside_root=True).imgs) == [10, 12]


def test_missing_area_is_filled_from_the_box_or_mask(tmp_path):
    data, path = _fixture(tmp_path)
    for ann in data["annotations"]:
        del ann["area"]
    data["annotations"][0]["bbox"] = [4, 6, 16, 15]  # box one row taller than its polygon
    assert _load(path, data).anns[1]["area"] == 16 * 15
    assert _load(path, data, check_masks=True).anns[1]["area"] == 16 * 14  # the polygon's pixel count


@pytest.mark.parametrize("shape", [(10, 8000), (8000, 10), (1, 3000)])
def test_very_thin_images_survive_the_training_pipeline(shape):
    h, w = shape
    transform = DetectionTransform(64, train=True, scale_range=(0.1, 2.0))
    for seed in range(8):
        transform.set_random_seed(seed)
        out = transform(np.zeros((h, w, 3), np.uint8), np.array([[0.0, 0.0, w, h]]), np.zeros(1, np.int64),
                        [np.ones((h, w), np.uint8)])
        assert out["image"].shape == (3, 64, 64) and len(out["boxes"]) == len(out["masks"])
