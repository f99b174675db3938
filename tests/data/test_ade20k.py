"""ADE20K datamodule on a tiny generated ADE20K-layout folder: labels, pipelines, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cbsa_dense.data.ade20k import ADE20K_CLASSES, ADE20KDataModule
from cbsa_dense.data.demo_seg import generate_demo_ade20k
from cbsa_dense.data.seeding import seed_worker
from cbsa_dense.data.seg_labels import read_mask, reduce_zero_label
from cbsa_dense.data.seg_transforms import SegEvalTransform, SegTrainTransform, rescale_size
from cbsa_dense.tasks.eval_protocol import SegEvaluation


@pytest.fixture
def ade_root(tmp_path):
    return generate_demo_ade20k(tmp_path / "ADEChallengeData2016", num_train=4, num_val=2, image_size=(40, 56))


def small_dm(root, **kwargs):
    args = dict(root=str(root), num_classes=6, crop_size=(32, 32), scale=(96, 40),
                evaluation=SegEvaluation(scale=(128, 48)),
                batch_size=2, val_batch_size=2, num_workers=0)
    args.update(kwargs)
    return ADE20KDataModule(**args)


def test_reduce_zero_label_matches_mmseg():
    mask = np.array([[0, 1, 2], [150, 255, 3]])
    assert reduce_zero_label(mask).tolist() == [[255, 0, 1], [149, 255, 2]]


def test_ade_names_and_layout(ade_root):
    assert len(ADE20K_CLASSES) == 150
    dm = small_dm(ade_root)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(train) == 4 and len(val) == 2
    sample = val[0]
    raw = np.asarray(Image.open(val.samples[0][1]))
    assert sample["orig_size"] == (40, 56)
    assert sample["image"].shape == (3, 48, 67)                      # short side 48, ratio kept
    assert sample["mask"].shape == (40, 56)                          # scored at the original size
    expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    assert (raw == 0).any()                                          # label 0 present -> ignored


def test_corrupt_mask_fails_at_setup_naming_the_file(ade_root):
    bad = sorted((ade_root / "annotations" / "training").iterdir())[1]
    Image.fromarray(np.full((40, 56), 200, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=f"{bad.name}.*200"):
        small_dm(ade_root).setup("fit")
    with pytest.raises(ValueError, match=bad.name):   # also when loaded without the setup scan
        dm = small_dm(ade_root, validate_labels=False)
        dm.setup("fit")
        [dm.datasets["train"][i] for i in range(4)]


def test_missing_annotation_and_wrong_root_are_named(ade_root, tmp_path):
    (ade_root / "annotations" / "validation" / "demo_00001.png").unlink()
    with pytest.raises(ValueError, match="demo_00001.jpg has no mask"):
        small_dm(ade_root).setup("validate")
    with pytest.raises(ValueError, match="ADEChallengeData2016 folder"):
        small_dm(tmp_path / "nowhere").setup("fit")


def test_train_pipeline_crop_pad_and_cat_max_ratio():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), np.int64)
    mask[:, 40:] = 1                                                  # class 0 dominates most crops
    t = SegTrainTransform(crop_size=(64, 30), scale=(60, 40), ratio_range=(1.0, 1.0), cat_max_ratio=0.75,
                          photometric=True)
    for seed in range(5):
        t.set_random_seed(seed)
        out = t(image, mask)
        assert out["image"].shape == (3, 64, 30) and out["image"].dtype == np.float32
        assert out["mask"].shape == (64, 30)
        assert (out["mask"][40:] == 255).all() and (out["image"][:, 40:] == 0).all()   # padded 0 / 255
        labels, counts = np.unique(out["mask"][:40], return_counts=True)
        assert len(labels) == 2 and counts.max() / counts.sum() < 0.75          # retry found a mixed crop
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)
    ev = SegEvalTransform(None, mean=(0.5,) * 3, std=(0.5,) * 3)(image, mask)
    np.testing.assert_allclose(ev["image"], image.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-5)


def test_workers_get_different_augmentations(ade_root):
    dm = small_dm(ade_root)
    dm.setup("fit")
    dataset = dm.datasets["train"]

    class FakeInfo:
        def __init__(self, seed):
            self.seed, self.dataset = seed, dataset

    outs = []
    for seed in (11, 12):
        import cbsa_dense.data.seeding as seeding

        original = seeding.get_worker_info
        seeding.get_worker_info = lambda s=seed: FakeInfo(s)
        try:
            seed_worker(0)
        finally:
            seeding.get_worker_info = original
        outs.append(torch.stack([dataset[0]["image"] for _ in range(2)]))
    assert not torch.equal(outs[0], outs[1])


def test_read_mask_palette_and_ignore_index(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 2] = (9, 9, 9)                                              # unknown colour -> ignored
    Image.fromarray(rgb).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", 3, palette=np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]]))
    assert out.tolist() == [[1, 2, 0], [0, 0, 255]]
    Image.fromarray(np.array([[0, 1, 9]], np.uint8)).save(tmp_path / "i.png")
    assert read_mask(tmp_path / "i.png", 2, ignore_index=9).tolist() == [[0, 1, 255]]
