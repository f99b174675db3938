"""fit / validate / test / predict through the real ``cbsa-dense`` CLI on tiny generated datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbsa_dense.cli import main
from cbsa_dense.data.demo_seg import generate_demo_ade20k

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True)
def _restore_threads():
    """The demo config sets torch's thread count for its process; keep other tests unaffected."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def run(*args: str) -> None:
    assert main(list(args)) == 0


def rows_with(path: Path, key: str) -> list[dict]:
    rows = [r for r in csv.DictReader(path.open()) if r.get(key)]
    assert rows, f"no {key} in {path}"
    return rows


def best_checkpoint(run_dir: Path) -> Path:
    """The top-1 ``val_miou`` checkpoint (``last.ckpt`` is only rewritten when a top-k one is)."""
    (ckpt,) = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    return ckpt


def test_demo_config_twin_fit_validate_test_predict(tmp_path):
    root = tmp_path / "ade"
    runs = tmp_path / "runs"
    common = ["--config", str(CONFIGS / "demo_seg.yaml"), "--data.init_args.root", str(root),
              "--data.init_args.num_train", "4", "--data.init_args.num_val", "2",
              "--data.init_args.image_size", "[40, 56]", "--data.init_args.crop_size", "[32, 32]",
              "--data.init_args.scale", "[96, 40]", "--data.init_args.batch_size", "2",
              "--trainer.logger.init_args.save_dir", str(runs), "--trainer.default_root_dir", str(tmp_path),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
              "--trainer.log_every_n_steps", "1"]
    run("fit", *common, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1")
    fit_dir = runs / "demo_seg" / "version_0"
    assert (root / "images" / "training" / "demo_00003.jpg").is_file()          # ADE20K layout generated
    assert (fit_dir / "config.yaml").is_file()
    assert (fit_dir / "checkpoints" / "last.ckpt").is_file()
    ckpt = best_checkpoint(fit_dir)
    vals = rows_with(fit_dir / "metrics.csv", "val_miou")
    assert [int(r["epoch"]) for r in vals] == [0, 1] and all(0.0 <= float(r["val_miou"]) <= 1.0 for r in vals)
    best = max(float(r["val_miou"]) for r in vals)
    assert len(rows_with(fit_dir / "metrics.csv", "train_loss")) == 4

    run("validate", *common, "--ckpt_path", str(ckpt))
    run("test", *common, "--ckpt_path", str(ckpt))
    report = json.loads(next(runs.glob("demo_seg/version_0/eval/test-*/test_per_class_iou.json")).read_text())
    # the best checkpoint's weights scored best on the val images; test (same images) reproduces it
    assert report["mIoU"] == pytest.approx(best, abs=1e-6)
    assert [row["class"] for row in report["per_class"]] == ["sky", "ground", "disc", "box", "triangle", "ring"]

    plain = tmp_path / "plain"                           # predict works on a plain folder of images
    plain.mkdir()
    (plain / "demo_00000.jpg").write_bytes((root / "images" / "validation" / "demo_00000.jpg").read_bytes())
    Image.fromarray(np.full((30, 70, 3), 120, np.uint8)).save(plain / "odd_size.jpg")
    pred_dir = tmp_path / "pred"
    run("predict", *common, "--ckpt_path", str(ckpt), "--model.init_args.predict_dir", str(pred_dir),
        "--data.init_args.predict_images", str(plain))
    labels = sorted((pred_dir / "labels").glob("*.png"))
    assert [p.name for p in labels] == ["demo_00000.png", "odd_size.png"]
    values = np.asarray(Image.open(labels[0]))
    assert values.shape == (40, 56) and values.min() >= 1 and values.max() <= 6  # ADE convention: class + 1
    assert np.asarray(Image.open(labels[1])).shape == (30, 70)                   # original size
    assert np.asarray(Image.open(pred_dir / "overlays" / "demo_00000.png")).shape == (40, 56, 3)


def make_folder_dataset(root: Path) -> dict:
    """Colour (palette) masks, non-square images of different sizes, a class-names file, a list file."""
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    rng = np.random.default_rng(0)
    for split, sizes in (("train", [(36, 52), (44, 40), (40, 60)]), ("val", [(38, 50), (30, 46)])):
        (root / "img" / split).mkdir(parents=True)
        (root / "msk" / split).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            label = np.zeros((h, w), np.int64)
            label[h // 3:, : w // 2] = 1
            label[: h // 2, 2 * w // 3:] = 2
            image = (np.array(palette)[label] * 0.6 + rng.integers(0, 60, (h, w, 3))).astype(np.uint8)
            colour = np.array(palette, np.uint8)[label]
            colour[0, :] = (7, 7, 7)                                          # unknown colour -> ignored
            Image.fromarray(image).save(root / "img" / split / f"{split}{i}.jpg")
            Image.fromarray(colour).save(root / "msk" / split / f"{split}{i}.png")
    (root / "classes.txt").write_text("background\nred thing\n\nblue thing\n")
    (root / "val.txt").write_text("".join(f"img/val/val{i}.jpg msk/val/val{i}.png\n" for i in range(2)))
    return {"palette": palette}


def test_custom_config_twin_on_a_folder_dataset(tmp_path):
    data = tmp_path / "data"
    info = make_folder_dataset(data)
    enc = "--model.init_args.encoder.init_args."
    head = "--model.init_args.head.init_args."
    common = ["--config", str(CONFIGS / "seg_custom.yaml"),
              "--data.init_args.train_images", str(data / "img" / "train"),
              "--data.init_args.train_masks", str(data / "msk" / "train"),
              "--data.init_args.val_images", str(data / "val.txt"),
              "--data.init_args.class_names", str(data / "classes.txt"),
              "--data.init_args.mask_palette", json.dumps(info["palette"]),
              "--data.init_args.crop_size", "[32, 32]", "--data.init_args.scale", "[128, 32]",
              "--model.init_args.evaluation.scale", "[128, 32]", "--data.init_args.batch_size", "2",
              "--data.init_args.num_workers", "0",
              f"{enc}img_size", "32", f"{enc}patch_size", "8", f"{enc}embed_dim", "32", f"{enc}depth", "1",
              f"{enc}num_heads", "2",
              f"{head}n_layers", "1", "--model.init_args.evaluation.window", "[32, 32]",
              "--model.init_args.evaluation.stride", "[24, 24]",
              "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"]
    run("fit", *common, "--trainer.max_epochs", "2")
    fit_dir = tmp_path / "runs" / "seg_custom" / "version_0"
    best = max(float(r["val_miou"]) for r in rows_with(fit_dir / "metrics.csv", "val_miou"))
    run("test", *common, "--ckpt_path", str(best_checkpoint(fit_dir)))
    (report_path,) = (tmp_path / "runs").glob("seg_custom/version_0/eval/test-*/test_per_class_iou.json")
    report = json.loads(report_path.read_text())
    assert report["mIoU"] == pytest.approx(best, abs=1e-6)
    assert [row["class"] for row in report["per_class"]] == ["background", "red thing", "blue thing"]
    run("predict", *common, "--ckpt_path", str(fit_dir / "checkpoints" / "last.ckpt"),
        "--model.init_args.predict_dir", str(tmp_path / "pred"))
    colour = np.asarray(Image.open(tmp_path / "pred" / "labels" / "val1.png"))
    assert colour.shape == (30, 46, 3)                                         # RGB masks written back as RGB
    assert {tuple(c) for c in colour.reshape(-1, 3)} <= {tuple(c) for c in info["palette"]}


def test_a_config_that_still_sets_num_classes_is_checked_against_the_data(tmp_path, capsys):
    """num_classes comes from the data (3 class names); a config of the first release that also sets it on
    the task is accepted when it agrees and refused, naming both, when it does not."""
    from tests.conftest import cli_user_error

    data = tmp_path / "data"
    make_folder_dataset(data)
    config = tmp_path / "old.yaml"
    config.write_text(f"_base_: {CONFIGS / 'seg_custom.yaml'}\nmodel: {{init_args: {{num_classes: 2}}}}\n")
    line = cli_user_error(["validate", "--config", str(config),
              "--data.init_args.train_images", str(data / "img" / "train"),
              "--data.init_args.train_masks", str(data / "msk" / "train"),
              "--data.init_args.val_images", str(data / "val.txt"),
              "--data.init_args.class_names", str(data / "classes.txt"),
              "--data.init_args.mask_palette", "[[0, 0, 0], [255, 0, 0], [0, 0, 255]]",
              "--model.init_args.encoder.init_args.depth", "1",
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)], capsys)
    assert ("the config sets model num_classes=2 but the data (SegFolderDataModule) has 3 classes" in line
            and "remove num_classes from the model config" in line), line


@pytest.mark.parametrize("config", ["seg_ade20k.yaml", "paper/ade20k_cbt_tiny.yaml", "paper/ade20k_cbt_small.yaml",
                                    "paper/ade20k_cbt_base.yaml", "paper/ade20k_cbt_large.yaml"])
def test_ade20k_config_twins_fast_dev_run(tmp_path, config):
    root = generate_demo_ade20k(tmp_path / "ADEChallengeData2016", num_train=2, num_val=1, image_size=(40, 56))
    enc = "--model.init_args.encoder.init_args."
    head = "--model.init_args.head.init_args."
    run("fit", "--config", str(CONFIGS / config), "--data.init_args.root", str(root),
        "--data.init_args.num_classes", "6", "--data.init_args.crop_size", "[32, 32]",
        "--data.init_args.scale", "[128, 32]", "--model.init_args.evaluation.scale", "[128, 32]",
        "--data.init_args.global_batch_size", "2", "--data.init_args.num_workers", "0",
        f"{enc}img_size", "32", f"{enc}embed_dim", "32", f"{enc}depth", "1", f"{enc}num_heads", "2",
        f"{enc}patch_size", "8", f"{head}n_layers", "1",
        "--model.init_args.evaluation.window", "[32, 32]",
        "--model.init_args.evaluation.stride", "[21, 21]",
        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false")


def test_finetune_cpu_config_twin_on_a_root_folder(tmp_path):
    """finetune_cpu.yaml at toy size (the real run, with pretrained weights, is tests/tasks/test_finetune_real.py)."""
    from tests.test_bad_images import make_dataset

    root = make_dataset(tmp_path / "my_data", size=(30, 44))
    enc = "--model.init_args.encoder.init_args."
    run("fit", "--config", "finetune_cpu.yaml", "--data.init_args.root", str(root),
        "--data.init_args.crop_size", "[28, 28]", "--data.init_args.scale", "[56, 28]",
        "--model.init_args.evaluation.scale", "[56, 28]",
        f"{enc}img_size", "28", f"{enc}embed_dim", "32", f"{enc}depth", "1", f"{enc}num_heads", "2",
        f"{enc}attn_layer.init_args.grid", "[2, 2]", "--model.init_args.freeze", "null",   # random init
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.default_root_dir", str(tmp_path))
    (best,) = (tmp_path / "runs" / "finetune_cpu" / "version_0" / "checkpoints").glob("*val_miou*.ckpt")
    import torch

    assert "optimizer_states" not in torch.load(best, map_location="cpu", weights_only=False)   # weights only
