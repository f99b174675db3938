"""A checkpoint evaluated on data of the other kind (a detector on segmentation data, or the reverse) stops
with exit status 2 and one line that names both classes, for every evaluating subcommand, before any data is
generated or read."""

from __future__ import annotations

import pytest

from tests.conftest import cli_user_error

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


@pytest.fixture
def empty_root(tmp_path):
    """Data roots that must stay empty: the check comes before the datamodule is built."""
    return tmp_path / "data"


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_a_detection_checkpoint_on_segmentation_data(subcommand, det_ckpt, empty_root, tmp_path, capsys):
    line = cli_user_error([subcommand, "--ckpt_path", str(det_ckpt), "--data", "DemoSegDataModule",
                           "--data.init_args.root", str(empty_root), *QUIET,
                           "--trainer.default_root_dir", str(tmp_path / "runs")], capsys)
    assert "DetectionTask" in line and "DemoSegDataModule" in line, line
    assert str(det_ckpt) in line, line
    assert not empty_root.exists()


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_a_segmentation_checkpoint_on_detection_data(subcommand, seg_ckpt, empty_root, tmp_path, capsys):
    line = cli_user_error([subcommand, "--ckpt_path", str(seg_ckpt), "--data", "DemoDetectionDataModule",
                           "--data.init_args.root", str(empty_root), *QUIET,
                           "--trainer.default_root_dir", str(tmp_path / "runs")], capsys)
    assert "SegmentationTask" in line and "DemoDetectionDataModule" in line, line
    assert str(seg_ckpt) in line, line
    assert not empty_root.exists()
