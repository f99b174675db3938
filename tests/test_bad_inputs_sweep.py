"""Hostile-user sweep (issue #10): each class of bad input stops the real CLI with one error line, exit 2.

Most cases fail at construction or while reading files, before any model runs; the data is tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli_user_error

ROOT = Path(__file__).resolve().parents[1]
DEMO_SEG = str(ROOT / "configs" / "demo_seg.yaml")


def _folder(tmp_path: Path, classes: bytes = b"a\nb\n") -> Path:
    """A seg-folder dataset of 2 + 1 tiny images with valid masks and ``classes.txt``."""
    root = tmp_path / "data"
    for split, n in (("train", 2), ("val", 1)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 12), (i * 40, 20, 30)).save(root / "images" / split / f"{i}.png")
            Image.fromarray((np.arange(12 * 16).reshape(12, 16) % 2).astype(np.uint8)).save(
                root / "masks" / split / f"{i}.png")
    (root / "classes.txt").write_bytes(classes)
    return root


def _fit_folder(tmp_path: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", DEMO_SEG, "--data", "cbsa_dense.data.seg_folder.SegFolderDataModule",
            "--data.init_args.root", str(root), "--data.init_args.num_workers", "0",
            "--data.init_args.crop_size", "[16, 16]", "--data.init_args.scale", "[16, 12]",
            "--trainer.fast_dev_run", "true", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path / "runs"), *extra]


def _demo(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", DEMO_SEG, "--data.init_args.root", str(tmp_path / "demo"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra]


# --- config values that jsonargparse rejects: the key and the cause, not the Union dump ---------------------

@pytest.mark.parametrize("key, value, expected", [
    ("--data.init_args.crop_size", "96", "--data.init_args.crop_size (cbsa_dense.data.DemoSegDataModule)"),
    ("--data.init_args.mean", "[0.5, 0.5]", "Expected a tuple with 3 elements"),
    ("--model.init_args.encoder.init_args.depth", "abc", "expected int or null, got 'abc'"),
    ("--data.init_args.bogus", "1", "Option 'bogus' is not accepted"),
])
def test_type_errors_name_the_key_and_cause_in_one_line(tmp_path, capsys, key, value, expected):
    line = cli_user_error(_demo(tmp_path, key, value), capsys)
    assert expected in line and "Union" not in line and "NestedArg" not in line, line
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("text, expected", [
    ("trainer:\n\tmax_epochs: 1\n", "YAML indents with spaces, not tabs"),
    ("trainer: [unclosed\n  x: {\n", "is not valid YAML"),
    ("- 1\n- 2\n", "holds a YAML list"),
    ("", "is empty"),
])
def test_broken_config_files_are_named(tmp_path, capsys, text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    for argv in (["fit", "--config", str(config)], ["info", "--config", str(config)]):
        line = cli_user_error(argv, capsys)
        assert str(config) in line and expected in line, line


def test_missing_config_file_is_one_line(tmp_path, capsys):
    line = cli_user_error(["fit", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "nope.yaml" in line and "does not exist" in line.lower(), line


# --- class names -------------------------------------------------------------------------------------------

def test_class_names_file_that_is_not_text(tmp_path, capsys):
    root = _folder(tmp_path, classes=bytes(range(256)))
    line = cli_user_error(_fit_folder(tmp_path, root), capsys)
    assert "classes.txt is not UTF-8 text" in line, line


def test_duplicate_class_names_are_refused(tmp_path, capsys):
    root = _folder(tmp_path, classes=b"cat\ncat\n")
    line = cli_user_error(_fit_folder(tmp_path, root), capsys)
    assert "names class 'cat' twice" in line, line


def test_class_names_file_with_bom_and_crlf_reads_clean_names(tmp_path):
    from cbsa_dense.data.seg_labels import load_class_names

    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffsky\r\n\r\nroad\r\n".encode())
    assert load_class_names(path) == ["sky", "road"]


def test_root_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    line = cli_user_error(_fit_folder(tmp_path, tmp_path / "afile"), capsys)
    assert "is a file, not a folder" in line, line


# --- COCO data settings and malformed RLE -------------------------------------------------------------------

def _coco(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(ROOT / "configs" / "demo_det.yaml"), "--data.init_args.root",
            str(tmp_path / "coco"), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra]


@pytest.mark.parametrize("key, value", [("image_size", "0"), ("batch_size", "0"), ("eval_batch_size", "0"),
                                        ("num_workers", "-1"), ("hflip", "2"), ("min_box_size", "-1")])
def test_detection_data_settings_are_checked_at_construction(tmp_path, capsys, key, value):
    line = cli_user_error(_coco(tmp_path, f"--data.init_args.{key}", value), capsys)
    assert f"{key}=" in line and "invalid" in line, line
    assert not (tmp_path / "coco").exists()                              # stopped before generating data


def test_detection_std_zero_is_refused(tmp_path, capsys):
    argv = _coco(tmp_path, "--data", "cbsa_dense.data.coco_datamodule.COCODetectionDataModule",
                 "--data.init_args.std", "[0, 0, 0]")
    line = cli_user_error(argv, capsys)
    assert "std=" in line and "positive" in line, line


@pytest.mark.parametrize("counts", ["zzzz!!", "ab", "0o"])
def test_malformed_rle_string_is_named_not_crashed_on(tmp_path, capsys, counts):
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 5}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0,
                           "segmentation": [[0, 0, 2, 0, 2, 2]]}],
          "categories": [{"id": 1, "name": "thing"}]}
    results = [{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": {"size": [4, 5], "counts": counts}}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    line = cli_user_error(["score", "coco", "--gt", str(tmp_path / "gt.json"), "--results", str(tmp_path / "res.json"),
                           "--iou-type", "segm"], capsys)
    assert "not a valid compressed RLE string" in line, line


def test_rle_string_decoder_matches_pycocotools():
    from pycocotools import mask as mask_utils

    from cbsa_dense.data.coco_validation import rle_string_counts

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        rle = mask_utils.encode(np.asfortranarray(rng.random((h, w)) < rng.random()))
        counts = rle_string_counts(rle["counts"].decode())
        assert sum(counts) == h * w and min(counts) >= 0


# --- score -------------------------------------------------------------------------------------------------

def test_score_results_with_negative_box_size(tmp_path, capsys):
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 1, "bbox": [0, 0, -2, 2]}]))
    line = cli_user_error(["score", "coco", "--gt", str(tmp_path / "gt.json"), "--results",
                           str(tmp_path / "res.json")], capsys)
    assert "negative width or height" in line, line


def test_score_gt_that_is_a_directory(tmp_path, capsys):
    line = cli_user_error(["score", "coco", "--gt", str(tmp_path), "--results", str(tmp_path / "r.json")], capsys)
    assert "is a directory" in line, line


@pytest.mark.parametrize("argv, expected", [([], "give what to score"), (["foo"], "unknown scorer 'foo'")])
def test_score_without_a_known_scorer(capsys, argv, expected):
    from cbsa_dense.cli import main

    capsys.readouterr()
    assert main(["score", *argv]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cbsa-dense score: error:") and expected in lines[0], lines


def test_score_seg_with_an_absurd_class_count(tmp_path, capsys):
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        Image.new("L", (4, 4), 0).save(tmp_path / folder / "a.png")
    line = cli_user_error(["score", "seg", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                           "--num-classes", "100000"], capsys)
    assert "--num-classes 100000" in line and "GiB" in line, line


# --- task settings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, expected", [
    ("evaluation.stride", "[200, 200]", "larger than window"),
    ("evaluation.window_batch", "0", "window_batch=0"),
    ("lr_scheduler.init_args.power", "-1", "power=-1.0"),
    ("lr_scheduler.init_args.min_lr_ratio", "2", "min_lr_ratio=2.0"),
])
def test_task_component_settings(tmp_path, capsys, key, value, expected):
    line = cli_user_error(_demo(tmp_path, f"--model.init_args.{key}", value), capsys)
    assert expected in line, line


# --- export / explain / info arguments --------------------------------------------------------------------

def test_export_arguments(seg_ckpt, tmp_path, capsys):
    base = ["export", "--ckpt_path", str(seg_ckpt), "--format", "torchscript"]
    line = cli_user_error([*base, "--output", str(tmp_path)], capsys)
    assert "is a directory" in line, line
    line = cli_user_error([*base, "--output", str(tmp_path / "m.pt"), "--tolerance", "-1"], capsys)
    assert "--tolerance" in line, line
    line = cli_user_error([*base, "--output", str(tmp_path / "m.pt"), "--image-size", "0", "0"], capsys)
    assert "image size" in line, line
    (tmp_path / "afile").write_text("x")
    line = cli_user_error([*base, "--output", str(tmp_path / "afile" / "m.pt")], capsys)
    assert "cannot write" in line, line


def test_explain_arguments(seg_run, seg_ckpt, tmp_path, capsys):
    image = str(next((seg_run / "data" / "images" / "validation").iterdir()))
    base = ["explain", "--ckpt_path", str(seg_ckpt), "--output", str(tmp_path / "out")]
    for extra, expected in ((["--images", image, "--pixel", "5000", "5000"], "is outside image"),
                            (["--images", image, "--pixel", "-1", "0"], "--pixel -1 0"),
                            (["--images", image, "--max-images", "0"], "--max-images 0"),
                            (["--images", str(tmp_path)], "no images")):
        line = cli_user_error([*base, *extra], capsys)
        assert expected in line, line


def test_info_image_size_zero(capsys):
    line = cli_user_error(["info", "--config", DEMO_SEG, "--image-size", "0", "0"], capsys)
    assert "--image-size 0 0" in line, line
