"""Folder datamodule for custom data: list files, label conventions, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbsa_dense.data.seg_folder import SegFolderDataModule, read_list_file


def make(root, name, label, size=None):
    h, w = label.shape
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "img" / f"{name}.png")
    Image.fromarray(label.astype(np.uint8), mode="L").save(root / "msk" / f"{name}.png")


def dm(root, **kwargs):
    args = dict(train_images=str(root / "img"), train_masks=str(root / "msk"), val_images=str(root / "img"),
                val_masks=str(root / "msk"), class_names=["a", "b", "c"], crop_size=(16, 16), scale=(64, 16),
                eval_scale=None, num_workers=0)
    args.update(kwargs)
    return SegFolderDataModule(**args)


def test_reduce_zero_label_and_custom_ignore_index(tmp_path):
    make(tmp_path, "x", np.array([[0, 1, 2, 3], [9, 3, 2, 1]]))
    module = dm(tmp_path, reduce_zero_label=True, ignore_index=9)
    module.setup("validate")
    mask = module.datasets["val"][0]["mask"]
    assert mask.tolist() == [[255, 0, 1, 2], [255, 2, 1, 0]]


def test_out_of_range_label_is_named_with_the_file(tmp_path):
    make(tmp_path, "ok", np.array([[0, 1], [2, 2]]))
    make(tmp_path, "bad", np.array([[0, 5], [2, 2]]))
    with pytest.raises(ValueError, match=r"bad\.png has values \[5\] outside the 3 classes"):
        dm(tmp_path).setup("fit")


def test_list_file_relative_paths_comments_and_errors(tmp_path):
    make(tmp_path, "x", np.array([[0, 1], [2, 2]]))
    lst = tmp_path / "val.txt"
    lst.write_text("# image mask\nimg/x.png msk/x.png\n\n")
    assert read_list_file(lst) == [(tmp_path / "img" / "x.png", tmp_path / "msk" / "x.png")]
    module = dm(tmp_path, val_images=str(lst), val_masks=None)
    module.setup("validate")
    assert len(module.datasets["val"]) == 1
    lst.write_text("img/x.png msk/missing.png\n")
    with pytest.raises(ValueError, match=r"val.txt:1: file .*missing.png does not exist"):
        read_list_file(lst)
    with pytest.raises(ValueError, match="give val_masks too"):
        dm(tmp_path, val_masks=None).setup("validate")


def test_class_names_file_and_palette_shape(tmp_path):
    make(tmp_path, "x", np.array([[0, 1], [1, 0]]))
    (tmp_path / "names.txt").write_text("sky\nroad\n")
    module = dm(tmp_path, class_names=str(tmp_path / "names.txt"))
    assert module.num_classes == 2 and module.class_names == ["sky", "road"]
    with pytest.raises(ValueError, match="must be 2 RGB triplets"):
        dm(tmp_path, class_names=str(tmp_path / "names.txt"), mask_palette=[[0, 0, 0]])
