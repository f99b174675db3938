"""Evaluating a checkpoint needs the data config only: the task is rebuilt from the checkpoint."""

import json
import re

from cbsa_dense.cli import _model_from_checkpoint, main


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


def test_other_class_count_in_the_data_is_named(seg_run, seg_ckpt, tmp_path, capsys):
    from tests.conftest import cli_user_error

    images, masks = seg_run / "data" / "images" / "validation", seg_run / "data" / "annotations" / "validation"
    line = cli_user_error(["test", "--ckpt_path", str(seg_ckpt), "--data", "cbsa_dense.data.seg_folder.SegFolderDataModule",
              "--data.train_images", str(images), "--data.train_masks", str(masks),
              "--data.val_images", str(images), "--data.val_masks", str(masks), "--data.validate_labels", "false",
              "--data.class_names", "[a, b, c]", "--trainer.logger", "false",
              "--trainer.default_root_dir", str(tmp_path)], capsys)
    assert re.search(r"num_classes=3 .* 6 classes", line), line
