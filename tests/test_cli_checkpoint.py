"""Evaluating a checkpoint needs the data config only: the task is rebuilt from the checkpoint."""

import json
import re

import pytest

from cbsa_dense.cli import _model_from_checkpoint, main
from tests.conftest import ROOT


def test_model_config_is_taken_from_the_checkpoint(seg_ckpt):
    args = _model_from_checkpoint(["test", "--ckpt_path", str(seg_ckpt), "--data", "X"])
    model = json.loads(args[2])
    assert args[1] == "--model" and model["class_path"] == "cbsa_dense.tasks.segmentation.SegmentationTask"
    assert model["init_args"]["model"]["init_args"]["head"]["init_args"]["num_classes"] == 6
    assert _model_from_checkpoint(["fit", "--ckpt_path", str(seg_ckpt)]) == ["fit", "--ckpt_path", str(seg_ckpt)]
    explicit = ["test", "--ckpt_path", str(seg_ckpt), "--model", "Y"]
    assert _model_from_checkpoint(explicit) == explicit


def test_test_with_only_the_data_config(seg_run, seg_ckpt, tmp_path):
    main(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.demo_seg.DemoSegDataModule",
          "--data.root", str(seg_run / "data"), "--data.num_train", "4", "--data.num_val", "2",
          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path)])
    report = json.loads((tmp_path / "test_per_class_iou.json").read_text())
    assert 0.0 <= report["mIoU"] <= 1.0 and len(report["per_class"]) == 6


def _best_val_miou(ckpt) -> float:
    import torch

    states = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]
    return float(next(v["best_model_score"] for k, v in states.items() if k.startswith("ModelCheckpoint")
                      and v.get("monitor") == "val_miou"))


def test_evaluation_protocol_travels_with_the_checkpoint(seg_run, seg_ckpt, tmp_path, capsys):
    """The demo validates with a 96x96 sliding window (stride 64) on 96x128 images; ``test --ckpt_path``
    with only the data config must use that protocol, reproduce the validation mIoU and say so."""
    data = ["--data.root", str(seg_run / "data"), "--data.num_train", "4", "--data.num_val", "2"]
    common = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    main(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.demo_seg.DemoSegDataModule", *data,
          *common, "--trainer.default_root_dir", str(tmp_path / "bare")])
    err = capsys.readouterr().err
    assert "inference sliding window 96x96, stride 64x64, scales [1.0], no flip (from the checkpoint)" in err
    assert "eval_scale None (from the checkpoint)" in err
    bare = json.loads((tmp_path / "bare" / "test_per_class_iou.json").read_text())["mIoU"]
    assert bare == pytest.approx(_best_val_miou(seg_ckpt), abs=1e-6)

    main(["test", "--config", str(ROOT / "cbsa_dense" / "configs" / "demo_seg.yaml"), "--ckpt_path", str(seg_ckpt),   # training config
          *[a.replace("--data.", "--data.init_args.") for a in data], *common,
          "--trainer.default_root_dir", str(tmp_path / "config")])
    assert "(from the config/command line)" in capsys.readouterr().err
    configured = json.loads((tmp_path / "config" / "test_per_class_iou.json").read_text())["mIoU"]
    assert configured == pytest.approx(bare, abs=1e-6)

    main(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.demo_seg.DemoSegDataModule", *data,  # override
          *common, "--model.init_args.inference", "cbsa_dense.tasks.sliding_window.SlidingWindowInference",
          "--model.init_args.inference.flip", "true", "--trainer.default_root_dir", str(tmp_path / "flip")])
    assert "inference whole image, scales [1.0], with flip (from the config/command line)" in capsys.readouterr().err


def test_other_class_count_in_the_data_is_named(seg_run, seg_ckpt, tmp_path, capsys):
    from tests.conftest import cli_user_error

    images, masks = seg_run / "data" / "images" / "validation", seg_run / "data" / "annotations" / "validation"
    line = cli_user_error(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.seg_folder.SegFolderDataModule",
              "--data.train_images", str(images), "--data.train_masks", str(masks),
              "--data.val_images", str(images), "--data.val_masks", str(masks), "--data.validate_labels", "false",
              "--data.class_names", "[a, b, c]", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path)], capsys)
    assert re.search(r"num_classes=3 .* 6 classes", line), line
