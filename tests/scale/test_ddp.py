"""Two-process DDP (gloo, CPU) fit + validate gives the same validation metric as one process.

Default suite: the tiny twin, through the shipped ``trainer/ddp.yaml`` preset. Slow: the demo model, longer."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scale.tiny import TINY_SEG, cli, data_args

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, cwd):
    cmd = [sys.executable, "-m", "cbsa_dense.cli", *args]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _val_miou(log_dir: Path) -> float:
    rows = list(csv.DictReader(open(next(log_dir.rglob("metrics.csv")))))
    return float(next(r["val_miou"] for r in reversed(rows) if r.get("val_miou")))


def test_tiny_ddp_fit_validates_as_one_process_does(tmp_path):
    """2 ranks (gloo) train 2 steps with the shipped DDP preset and validate 5 images at the end (odd: the
    DistributedSampler pads rank 1's share with image 0; batches of 2, so rank 1's last batch is that repeat
    alone); one process validating the saved checkpoint must give the same mIoU, every image counted once."""
    common = [*TINY_SEG, *data_args(tmp_path / "data", num_train=8, num_val=5, batch_size=2, val_batch_size=2)]
    fit = cli("fit", *common, "--config", "trainer/ddp.yaml", "--trainer.accelerator", "cpu",
              "--trainer.devices", "2", "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
              "--trainer.logger.init_args.save_dir", tmp_path / "fit", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    rows = list(csv.DictReader(open(next((tmp_path / "fit").rglob("metrics.csv")))))
    assert max(int(r["step"]) for r in rows) + 1 == 2           # 8 images / (2 ranks x 2): 2 steps, not 4
    ckpt = next((tmp_path / "fit").rglob("last.ckpt"))
    single = cli("validate", *common, "--trainer.devices", "1", "--ckpt_path", ckpt,
                 "--trainer.logger.init_args.save_dir", tmp_path / "single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp, one = _val_miou(tmp_path / "fit"), _val_miou(tmp_path / "single")
    assert 0.0 < one <= 1.0
    assert ddp == pytest.approx(one, abs=1e-6), (ddp, one)


@pytest.mark.slow
def test_ddp_fit_and_validate_match_single_process(tmp_path):
    data = ["--data.init_args.root", str(tmp_path / "data"), "--data.init_args.num_train", "8",
            "--data.init_args.num_val", "6", "--data.init_args.batch_size", "2",
            "--data.init_args.val_batch_size", "1"]
    common = ["--config", str(ROOT / "configs" / "demo_seg.yaml"), *data, "--trainer.enable_progress_bar", "false"]
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    _cli("fit", *common, *ddp, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
         "--trainer.logger.init_args.save_dir", str(tmp_path / "fit"), cwd=tmp_path)
    ckpt = next((tmp_path / "fit").rglob("last.ckpt"))
    scores = {}
    for name, extra in (("ddp", ddp), ("single", ["--trainer.devices", "1"])):
        _cli("validate", *common, *extra, "--ckpt_path", str(ckpt),
             "--trainer.logger.init_args.save_dir", str(tmp_path / name), cwd=tmp_path)
        scores[name] = _val_miou(tmp_path / name)
    assert 0.0 < scores["single"] <= 1.0
    assert scores["ddp"] == pytest.approx(scores["single"], abs=1e-6), scores


def _metric(log_dir: Path, key: str) -> float:
    rows = list(csv.DictReader(open(next(log_dir.rglob("metrics.csv")))))
    return float(next(r[key] for r in reversed(rows) if r.get(key)))


@pytest.mark.slow
def test_ddp_validate_and_test_odd_images_match_single_process(tmp_path):
    """5 validation images on 2 ranks: a padded DistributedSampler would score image 0 twice (rank 1's share
    is [1, 3, 0]); the dataset-level confusion matrix must count every image exactly once. Batches of 2, so
    rank 1's last batch holds only the padding repeat (an all-padding batch)."""
    data = ["--data.init_args.root", str(tmp_path / "data"), "--data.init_args.num_train", "8",
            "--data.init_args.num_val", "5", "--data.init_args.batch_size", "2",
            "--data.init_args.val_batch_size", "2"]
    common = ["--config", str(ROOT / "configs" / "demo_seg.yaml"), *data, "--trainer.enable_progress_bar", "false"]
    _cli("fit", *common, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2",
         "--trainer.logger.init_args.save_dir", str(tmp_path / "fit"), cwd=tmp_path)
    ckpt = next((tmp_path / "fit").rglob("last.ckpt"))
    scores = {}
    for name, extra in (("ddp", ["--trainer.devices", "2", "--trainer.strategy", "ddp"]),
                        ("single", ["--trainer.devices", "1"])):
        for stage in ("validate", "test"):
            save_dir = tmp_path / f"{stage}_{name}"
            _cli(stage, *common, *extra, "--ckpt_path", str(ckpt), "--trainer.logger.init_args.save_dir",
                 str(save_dir), "--trainer.default_root_dir", str(save_dir), cwd=tmp_path)
            key = "val_miou" if stage == "validate" else "test_miou"
            scores[name, stage] = _metric(save_dir, key)
    assert 0.0 < scores["single", "validate"] <= 1.0
    assert scores["single", "test"] == pytest.approx(scores["single", "validate"], abs=1e-6), scores
    assert scores["ddp", "validate"] == pytest.approx(scores["single", "validate"], abs=1e-6), scores
    assert scores["ddp", "test"] == pytest.approx(scores["single", "test"], abs=1e-6), scores
