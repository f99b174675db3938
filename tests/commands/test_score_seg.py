"""``cbsa-dense score seg`` against a plain NumPy statement of MMSegmentation's definition."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cbsa_dense.cli import main
from tests.conftest import cli_user_error


def numpy_mmseg(preds, gts, num_classes, reduce_zero, ignore=255):
    """Per class over the whole dataset: I = #(pred == c & gt == c), U = #(pred == c) + #(gt == c) - I."""
    inter = np.zeros(num_classes)
    pred_area = np.zeros(num_classes)
    gt_area = np.zeros(num_classes)
    for pred, gt in zip(preds, gts):
        pred, gt = pred.astype(np.int64), gt.astype(np.int64)
        if reduce_zero:  # mmseg: gt[gt == 0] = 255; gt = gt - 1; gt[gt == 254] = 255 (on uint8)
            gt = np.where(gt == 0, 255, gt - 1)
            gt[gt == 254] = 255
            pred = np.where(pred == 0, 255, pred - 1)
            pred[pred == 254] = 255
        keep = gt != ignore
        pred, gt = pred[keep], gt[keep]
        for c in range(num_classes):
            inter[c] += np.sum((pred == c) & (gt == c))
            pred_area[c] += np.sum(pred == c)
            gt_area[c] += np.sum(gt == c)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (pred_area + gt_area - inter)
        acc = inter / gt_area
    return {"mIoU": np.nanmean(iou), "aAcc": inter.sum() / gt_area.sum(), "mAcc": np.nanmean(acc), "IoU": iou}


def write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode="L").save(folder / f"{name}.png")


@pytest.mark.parametrize("reduce_zero", [False, True])
def test_matches_numpy_reference_with_absent_classes_and_ignored_pixels(tmp_path, capsys, reduce_zero):
    rng = np.random.default_rng(1)
    num_classes = 5
    preds, gts = [], []
    for i, (h, w) in enumerate([(17, 23), (9, 31), (20, 20)]):
        gt = rng.integers(0, num_classes, (h, w))
        gt[gt == 3] = 1                                           # class 3 absent from every ground truth
        pred = np.where(rng.random((h, w)) < 0.55, gt, rng.integers(0, num_classes, (h, w)))  # ...but predicted
        pred[pred == 4] = 2                                       # class 4 labelled but never predicted
        if reduce_zero:
            gt, pred = gt + 1, pred + 1
            gt[rng.random((h, w)) < 0.1] = 0                      # "other" -> ignored
        gt[rng.random((h, w)) < 0.1] = 255                        # ignored pixels
        preds.append(pred)
        gts.append(gt)
        write(tmp_path / "pred", f"img{i}", pred)
        write(tmp_path / "gt", f"img{i}", gt)
    write(tmp_path / "pred", "extra_without_gt", pred)         # unmatched predictions are not scored
    argv = ["score", "seg", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
            "--num-classes", str(num_classes)] + (["--reduce-zero-label"] if reduce_zero else [])
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    ref = numpy_mmseg(preds, gts, num_classes, reduce_zero)
    assert ref["IoU"][3] == 0.0                                    # predicted-but-absent class counts as 0
    assert out["num_images"] == 3
    for key in ("mIoU", "aAcc", "mAcc"):
        assert out[key] == pytest.approx(ref[key], abs=1e-12)
    assert out["IoU"] == pytest.approx(ref["IoU"].tolist(), abs=1e-12)


def test_absent_class_is_null_custom_ignore_and_errors(tmp_path, capsys):
    write(tmp_path / "gt", "a", np.array([[0, 1, 7]]))
    write(tmp_path / "pred", "a", np.array([[0, 0, 1]]))
    assert main(["score", "seg", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                 "--num-classes", "3", "--ignore-index", "7"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["IoU"] == [0.5, 0.0, None] and out["aAcc"] == 0.5
    base = ["score", "seg", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "3"]
    line = cli_user_error(base, capsys)                           # 7 is not ignored now: named error
    assert "a.png: ground-truth value 7" in line
    write(tmp_path / "gt", "b", np.array([[0, 1]]))
    line = cli_user_error(base + ["--ignore-index", "7"], capsys)
    assert f"no prediction {tmp_path / 'pred' / 'b.png'} for ground truth {tmp_path / 'gt' / 'b.png'}" in line


def test_size_mismatch_and_colour_predictions_name_the_file(tmp_path, capsys):
    write(tmp_path / "gt", "a", np.array([[0, 1]]))
    write(tmp_path / "pred", "a", np.array([[0, 1, 2]]))
    base = ["score", "seg", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--num-classes", "3"]
    line = cli_user_error(base, capsys)
    assert f"prediction {tmp_path / 'pred' / 'a.png'} is 3x1 (WxH) but ground truth" in line and "is 2x1" in line
    Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(tmp_path / "pred" / "a.png")  # a colour picture
    line = cli_user_error(base, capsys)
    assert f"label map {tmp_path / 'pred' / 'a.png'}: expected a single-channel index PNG, got mode RGB" in line
    (tmp_path / "pred" / "a.png").write_bytes(b"not a png")
    assert f"cannot read label map {tmp_path / 'pred' / 'a.png'}" in cli_user_error(base, capsys)
    line = cli_user_error(base[:3] + [str(tmp_path / "nowhere")] + base[4:], capsys)
    assert f"--pred folder {tmp_path / 'nowhere'} does not exist" in line
