"""A checkpoint alone predicts: in an empty folder holding only ``m.ckpt`` and ``photos/``,
``cbsa-dense predict --ckpt_path m.ckpt --images ...`` (no config, no training data) and
``cbsa_dense.load("m.ckpt").predict(...)`` give the same labels (segmentation) and detections (detection)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cbsa_dense
from cbsa_dense.cli import main as cli_main
from tests.conftest import cli_user_error


def _empty_folder(tmp_path: Path, ckpt: Path, images: list[Path]) -> Path:
    (tmp_path / "photos").mkdir()
    shutil.copy(ckpt, tmp_path / "m.ckpt")
    for image in images:
        shutil.copy(image, tmp_path / "photos" / image.name)
    return tmp_path


def _photos(ckpt: Path, count: int) -> list[Path]:
    """The first validation images of the generated data of the fixture run that wrote ``ckpt``."""
    data = next(parent / "data" for parent in ckpt.parents if (parent / "data").is_dir())
    found = sorted(p for p in data.rglob("*") if p.suffix in (".jpg", ".png") and p.parent.name.startswith("val"))
    assert len(found) >= count, found
    return found[:count]


def _outputs_folder(out: str) -> Path:
    line = next(line for line in out.splitlines() if line.startswith("predict outputs: "))
    return Path(line.split(": ", 1)[1])


def test_segmentation_checkpoint_alone(seg_ckpt, tmp_path, monkeypatch, capsys, recwarn):
    images = _photos(seg_ckpt, 2)
    folder = _empty_folder(tmp_path, seg_ckpt, images)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)             # as in a new process (the fixture's fit set it)
    capsys.readouterr()
    assert cli_main(["predict", "--ckpt_path", "m.ckpt", "--images", "photos/",
                     "--trainer.enable_progress_bar", "false"]) == 0
    outputs = _outputs_folder(capsys.readouterr().out)
    assert outputs.is_relative_to(folder.resolve()) or outputs.is_relative_to(folder)
    assert not [str(w.message) for w in recwarn if "seed" in str(w.message)]   # seed 0, not Lightning's warning
    model = cbsa_dense.load("m.ckpt")
    reduce_zero = bool(model.task.data_info.get("reduce_zero_label"))
    for image in images:
        written = np.array(Image.open(outputs / "predictions" / "labels" / f"{image.stem}.png"))
        labels = model.predict(f"photos/{image.name}")
        assert written.shape == labels.shape
        np.testing.assert_array_equal(written, labels + 1 if reduce_zero else labels)
        assert (outputs / "predictions" / "overlays" / f"{image.stem}.png").is_file()


def test_detection_checkpoint_alone(det_ckpt, tmp_path, monkeypatch, capsys):
    images = _photos(det_ckpt, 2)
    folder = _empty_folder(tmp_path, det_ckpt, images)
    monkeypatch.chdir(folder)
    capsys.readouterr()
    assert cli_main(["predict", "--ckpt_path", "m.ckpt", "--images", f"photos/*{images[0].suffix}",
                     "--trainer.enable_progress_bar", "false"]) == 0
    outputs = _outputs_folder(capsys.readouterr().out)
    results = json.loads((outputs / "predictions.json").read_text())
    model = cbsa_dense.load("m.ckpt")
    for image_id, image in enumerate(images, start=1):          # ids follow the sorted file names
        mine = sorted((e for e in results if e["image_id"] == image_id), key=lambda e: -e["score"])
        found = model.predict(f"photos/{image.name}")
        assert len(mine) == len(found["boxes"]) > 0
        order = np.argsort(-found["scores"], kind="stable")
        np.testing.assert_allclose([e["score"] for e in mine], found["scores"][order], rtol=1e-5, atol=1e-6)
        boxes = np.array([e["bbox"] for e in mine])
        boxes[:, 2:] += boxes[:, :2]
        np.testing.assert_allclose(boxes, found["boxes"][order], rtol=1e-4, atol=1e-3)
        assert (outputs / "overlays" / f"{image.stem}.png").is_file()


def test_predict_without_images_or_data_says_what_to_give(seg_ckpt, capsys):
    line = cli_user_error(["predict", "--ckpt_path", str(seg_ckpt)], capsys)
    assert "--images" in line and str(seg_ckpt) in line


@pytest.mark.parametrize("value, expected", [("no_such_folder/", "no such file or folder"),
                                             ("nothing_here/*.jpg", "matches no image file")])
def test_images_that_name_no_image_are_one_line(seg_ckpt, tmp_path, monkeypatch, capsys, value, expected):
    monkeypatch.chdir(tmp_path)
    line = cli_user_error(["predict", "--ckpt_path", str(seg_ckpt), "--images", value], capsys)
    assert value in line and expected in line


def test_images_is_a_predict_option(seg_ckpt, capsys):
    line = cli_user_error(["test", "--ckpt_path", str(seg_ckpt), "--images", "photos/"], capsys)
    assert "--images is an option of cbsa-dense predict" in line
