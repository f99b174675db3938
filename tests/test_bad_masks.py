"""Masks (issue #10, class 3): lossy formats refused, all-ignored batches add zero loss and are counted
(and the NaN stop does not blame the learning rate for them), unpaired files are errors (or a logged,
opted-in skip), out-of-class values are a DataError, and a mask's own EXIF orientation is applied like
its image's."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torch.utils.data import DataLoader

from cbsa_dense.callbacks import FiniteLossCheck, NonFiniteLossError
from cbsa_dense.data.seg_dataset import SegDataset, pair_by_stem
from cbsa_dense.data.seg_folder import SegFolderDataModule, read_list_file
from cbsa_dense.data.seg_labels import read_mask
from cbsa_dense.errors import ConfigError, DataError
from tests.conftest import cli_user_error
from tests.test_bad_images import (  # noqa: F401 - the fixture restores torch's thread count
    _restore_threads,
    cli_args,
    exif,
    fit_ok,
    is_red,
    make_dataset,
    quadrant_image,
)


def jpeg_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=75)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------- lossy
def test_jpeg_masks_are_refused_saying_why(tmp_path):
    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 2
    Image.fromarray(label, mode="L").save(tmp_path / "m.jpg")
    with pytest.raises(DataError, match=r"mask .*m\.jpg is a \.jpg file: lossy compression invents label values "
                                        r"at region edges.*save masks as PNG"):
        read_mask(tmp_path / "m.jpg", num_classes=3)
    (tmp_path / "disguised.png").write_bytes(jpeg_bytes(label))            # JPEG content, PNG name
    with pytest.raises(DataError, match=r"disguised\.png is a JPEG file \(whatever its name\): lossy"):
        read_mask(tmp_path / "disguised.png", num_classes=3)
    Image.fromarray(label, mode="L").save(tmp_path / "m.webp")
    with pytest.raises(DataError, match=r"m\.webp is a \.webp file: lossy"):
        read_mask(tmp_path / "m.webp", num_classes=3)


def test_lossy_mask_suffix_and_list_entries(tmp_path):
    root = make_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"mask_suffix='\.jpg' is a lossy format"):
        SegFolderDataModule(root=str(root), mask_suffix=".jpg")
    Image.fromarray(np.zeros((24, 40), np.uint8), mode="L").save(root / "masks" / "val" / "val0.jpg")
    (root / "val.txt").write_text("images/val/val0.png masks/val/val0.jpg\n")
    with pytest.raises(DataError, match=r"val\.txt:1: mask .*val0\.jpg is a \.jpg file: lossy"):
        read_list_file(root / "val.txt")


def test_jpeg_mask_through_the_cli(tmp_path, capsys):
    root = make_dataset(tmp_path / "data")
    (root / "masks" / "train" / "train1.png").write_bytes(jpeg_bytes(np.zeros((24, 40), np.uint8)))
    line = cli_user_error(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"), capsys)
    assert "masks/train/train1.png is a JPEG file" in line and "lossy compression invents label" in line


def test_jpeg_masks_beside_png_expectation_are_named(tmp_path):
    root = make_dataset(tmp_path / "data")
    (root / "masks" / "train" / "train1.png").unlink()
    Image.fromarray(np.zeros((24, 40), np.uint8), mode="L").save(root / "masks" / "train" / "train1.jpg")
    with pytest.raises(DataError, match=r"image .*train1\.png has no mask .*train1\.png \(found train1\.jpg: "
                                        r"masks must be lossless PNGs"):
        SegFolderDataModule(root=str(root), num_workers=0).setup("fit")


# ------------------------------------------------------------------------------------ all ignored
def tiny_task():
    from cbsa_dense.models.encoders import ViTEncoder
    from cbsa_dense.models.heads.linear_head import LinearHead
    from cbsa_dense.tasks.segmentation import SegmentationTask

    return SegmentationTask(ViTEncoder(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2), LinearHead, 3)


def test_all_ignored_batch_gives_zero_loss_and_is_counted():
    task = tiny_task()
    logged = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, (value, kw))
    images = torch.randn(2, 3, 16, 16)
    ignored = {"image": images, "mask": torch.full((2, 16, 16), 255, dtype=torch.int64), "path": ["a", "b"]}
    loss = task.training_step(ignored, 0)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()                                                    # still a graph: every rank can step
    assert task.all_ignored_batches == 1 and logged["train_all_ignored_batches"][0] == 1.0
    assert logged["train_all_ignored_batches"][1]["reduce_fx"] == "sum"
    labelled = dict(ignored, mask=torch.randint(0, 3, (2, 16, 16)))
    assert task.training_step(labelled, 1).item() > 0
    assert task.all_ignored_batches == 1 and logged["train_all_ignored_batches"][0] == 0.0


def test_all_ignored_masks_train_with_zero_loss_through_the_cli(tmp_path):
    root = make_dataset(tmp_path / "data")
    for mask in (root / "masks" / "train").glob("*.png"):
        Image.fromarray(np.full((24, 40), 255, np.uint8), mode="L").save(mask)
    fit_ok(cli_args(root, tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0",
                    "--trainer.log_every_n_steps", "1",
                    "--trainer.callbacks", "cbsa_dense.callbacks.FiniteLossCheck"))
    rows = list(csv.DictReader(next((tmp_path / "runs").rglob("metrics.csv")).open()))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    counts = [float(r["train_all_ignored_batches"]) for r in rows if r.get("train_all_ignored_batches")]
    assert losses == [0.0, 0.0] and counts == [1.0, 1.0]               # one batch per epoch, both counted


class _MeanCEModule(LightningModule):
    """A model whose plain mean cross-entropy is NaN on an all-ignored batch."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.conv(batch["image"]), batch["mask"], ignore_index=255)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_nan_stop_does_not_blame_the_learning_rate_for_an_all_ignored_batch(tmp_path):
    batch = {"image": torch.randn(1, 3, 4, 4), "mask": torch.full((1, 4, 4), 255), "path": ["x/a.png"]}
    trainer = Trainer(max_epochs=1, callbacks=[FiniteLossCheck()], default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader([batch], batch_size=None)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(_MeanCEModule(), loader)
    message = str(info.value)
    assert "every mask pixel of the batch is ignored (255)" in message and "x/a.png" in message
    assert "Lower the learning rate" not in message


# ---------------------------------------------------------------------------------------- unpaired
def test_image_without_mask_through_the_cli(tmp_path, capsys):
    root = make_dataset(tmp_path / "data")
    (root / "masks" / "train" / "train1.png").unlink()
    line = cli_user_error(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"), capsys)
    assert "images/train/train1.png has no mask" in line and "masks/train/train1.png" in line
    assert "skip_unpaired=true" in line


def test_mask_without_image_through_the_cli(tmp_path, capsys):
    root = make_dataset(tmp_path / "data")
    (root / "images" / "val" / "val0.png").unlink()
    line = cli_user_error(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"), capsys)
    assert "masks/val/val0.png has no image" in line


def test_skip_unpaired_is_an_explicit_logged_opt_in(tmp_path, caplog):
    root = make_dataset(tmp_path / "data", n=3)
    (root / "masks" / "train" / "train1.png").unlink()
    (root / "images" / "train" / "train2.png").unlink()
    module = SegFolderDataModule(root=str(root), num_workers=0, skip_unpaired=True)
    with caplog.at_level(logging.WARNING):
        module.setup("fit")
    assert [p.name for p, _ in module.datasets["train"].samples] == ["train0.png"]
    assert "skipping 1 image(s) without a mask" in caplog.text and "train1.png" in caplog.text
    assert "1 mask(s) without an image" in caplog.text and "train2.png" in caplog.text


def test_two_images_with_one_stem_are_ambiguous(tmp_path):
    root = make_dataset(tmp_path / "data")
    Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(root / "images" / "train" / "train0.jpg")
    with pytest.raises(DataError, match=r"train0\.jpg and .*train0\.png have the same stem 'train0'"):
        pair_by_stem(sorted((root / "images" / "train").iterdir()), root / "masks" / "train")


# ------------------------------------------------------------------------------- values, EXIF masks
def test_values_outside_the_classes_through_the_cli(tmp_path, capsys):
    root = make_dataset(tmp_path / "data")
    label = np.zeros((24, 40), np.uint8)
    label[0, 0] = 7
    Image.fromarray(label, mode="L").save(root / "masks" / "val" / "val1.png")
    line = cli_user_error(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"), capsys)
    assert "masks/val/val1.png has values [7] outside the 3 classes" in line


def test_mask_exif_orientation_is_applied_like_the_image(tmp_path):
    """Image and mask both stored landscape with Orientation=6 (as a camera app writes both): a viewer
    shows both portrait, and the labels stay on their pixels."""
    stored = quadrant_image(24, 40)
    Image.fromarray(stored).save(tmp_path / "a.jpg", exif=exif(6), quality=95)
    label = np.where(stored[..., 0] > 128, 1, 0).astype(np.uint8)      # 1 on the red quadrant
    Image.fromarray(label, mode="L").save(tmp_path / "a.png", exif=exif(6))
    sample = SegDataset([(tmp_path / "a.jpg", tmp_path / "a.png")], lambda i, m: {"image": i, "mask": m},
                        num_classes=2)[0]
    image, mask = np.asarray(sample["image"]), np.asarray(sample["mask"])
    assert image.shape[:2] == mask.shape == (40, 24)
    assert mask[0, -1] == 1 and is_red(image[0, -1])                   # stored top-left -> displayed top-right
    assert mask[-1, 0] == 0 and not is_red(image[-1, 0])
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png", num_classes=2), np.rot90(label, -1))
