"""Detection learns, at toy size: demo_det.yaml's model (CBSA ViT + simple pyramid + FCOS) shrunk to width 32
and one block, trained through the real CLI on 8 generated demo images, fits them: the loss falls and the COCO
mAP of those images rises well above zero. The demo's full run (AP50 0.79 on held-out images) is the slow
tier's; a model this small needs its training images to show learning within a minute."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from cbsa_dense.cli import main
from cbsa_dense.data.demo_det import generate_demo_coco

ROOT = Path(__file__).resolve().parents[2]
ENC = "--model.init_args.encoder.init_args."
#: Passes over the training images (3 steps each): 60 steps, about a minute on 2 loaded cores.
EPOCHS = 20


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_tiny_demo_detector_fits_its_training_images(tmp_path):
    root = generate_demo_coco(tmp_path / "coco", num_train=8, num_val=2, size_range=(56, 72))
    train = ["annotations/instances_train.json", "train"]
    assert main(["fit", "--config", str(ROOT / "configs" / "demo_det.yaml"),
                 "--data", "COCODetectionDataModule", "--data.init_args.root", str(root),
                 "--data.init_args.train_json", train[0], "--data.init_args.train_images", train[1],
                 "--data.init_args.val_json", train[0], "--data.init_args.val_images", train[1],
                 "--data.init_args.hflip", "0", "--data.init_args.scale_range", "[1, 1]",
                 "--data.init_args.image_size", "64", "--data.init_args.batch_size", "2",
                 "--data.init_args.num_workers", "0",
                 f"{ENC}img_size", "64", f"{ENC}embed_dim", "32", f"{ENC}depth", "1", f"{ENC}num_heads", "2",
                 "--model.init_args.neck.init_args.out_channels", "32", "--model.init_args.head.init_args.num_convs", "1",
                 "--model.init_args.optimizer.init_args.lr", "0.004",
                 "--model.init_args.lr_scheduler.init_args.warmup_iters", "5",
                 "--trainer.max_epochs", str(EPOCHS), "--trainer.check_val_every_n_epoch", str(EPOCHS),
                 "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "runs"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]) == 0
    rows = list(csv.DictReader(open(next((tmp_path / "runs").rglob("metrics.csv")))))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert len(losses) == 3 * EPOCHS          # 3 steps an epoch: batches of 2, images without boxes left out
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, f"train loss {first:.3f} -> {last:.3f}"             # measured 2.8 -> 1.1
    ap50 = float(next(r["val_map_50"] for r in reversed(rows) if r.get("val_map_50")))
    assert ap50 > 0.3, f"bbox AP50 {ap50:.3f} on the training images"                 # measured 0.56
