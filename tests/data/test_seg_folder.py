"""Folder datamodule for custom data: list files, label conventions, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbsa_dense.data.seg_folder import SegFolderDataModule, read_list_file
from cbsa_dense.errors import ConfigError, DataError
from cbsa_dense.tasks.eval_protocol import SegEvaluation


def make(root, name, label, size=None):
    h, w = label.shape
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(root / "img" / f"{name}.png")
    Image.fromarray(label.astype(np.uint8), mode="L").save(root / "msk" / f"{name}.png")


def dm(root, **kwargs):
    args = dict(train_images=str(root / "img"), train_masks=str(root / "msk"), val_images=str(root / "img"),
                val_masks=str(root / "msk"), class_names=["a", "b", "c"], crop_size=(16, 16), scale=(64, 16),
                evaluation=SegEvaluation(scale=None), num_workers=0)
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
    with pytest.raises(DataError, match=r"bad\.png has values \[5\] outside the 3 classes"):
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
    with pytest.raises(DataError, match=r"val.txt:1: file .*missing.png does not exist"):
        read_list_file(lst)
    with pytest.raises(ConfigError, match="give val_masks too"):
        dm(tmp_path, val_masks=None).setup("validate")


def test_class_names_file_and_palette_shape(tmp_path):
    make(tmp_path, "x", np.array([[0, 1], [1, 0]]))
    (tmp_path / "names.txt").write_text("sky\nroad\n")
    module = dm(tmp_path, class_names=str(tmp_path / "names.txt"))
    assert module.num_classes == 2 and module.class_names == ["sky", "road"]
    with pytest.raises(ConfigError, match="must be 2 RGB triplets"):
        dm(tmp_path, class_names=str(tmp_path / "names.txt"), mask_palette=[[0, 0, 0]])


# ------------------------------------------------------------------------------------- root layout
def make_root(root, splits=("train", "val"), classes="sky\nroad\ncar\n"):
    for split in splits:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(np.full((8, 12, 3), 100, np.uint8)).save(root / "images" / split / f"{split}{i}.jpg")
            Image.fromarray(np.full((8, 12), i, np.uint8), mode="L").save(root / "masks" / split / f"{split}{i}.png")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def names(module, split):
    return [(image.name, mask.name) for image, mask in module.split_samples(split)]


def test_root_layout_defaults_and_test_falls_back_to_val(tmp_path):
    root = make_root(tmp_path / "data")
    module = SegFolderDataModule(root=str(root), num_workers=0)
    assert module.class_names == ["sky", "road", "car"] and module.num_classes == 3
    assert names(module, "train") == [("train0.jpg", "train0.png"), ("train1.jpg", "train1.png")]
    assert names(module, "val") == names(module, "test") == [("val0.jpg", "val0.png"), ("val1.jpg", "val1.png")]
    make_root(root, splits=("test",))
    assert names(SegFolderDataModule(root=str(root)), "test")[0] == ("test0.jpg", "test0.png")


def test_explicit_arguments_override_the_root_layout(tmp_path):
    root = make_root(tmp_path / "data")
    other = make_root(tmp_path / "other")
    module = SegFolderDataModule(root=str(root), val_images=str(other / "images" / "train"),
                                 val_masks=str(other / "masks" / "train"), class_names=["a", "b"])
    assert module.class_names == ["a", "b"]
    assert module.split_samples("val")[0][0] == other / "images" / "train" / "train0.jpg"
    assert module.split_samples("train")[0][0] == root / "images" / "train" / "train0.jpg"


def test_root_layout_problems_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"root=.*nowhere: folder .*nowhere does not exist"):
        SegFolderDataModule(root=str(tmp_path / "nowhere"))
    root = make_root(tmp_path / "data", classes=None)
    with pytest.raises(DataError, match=r"class-names file .*data/classes\.txt does not exist"):
        SegFolderDataModule(root=str(root))
    (root / "classes.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"classes\.txt names no classes"):
        SegFolderDataModule(root=str(root))
    (root / "classes.txt").write_text("a\nb\n")
    for path in (root / "masks" / "val").iterdir():
        path.unlink()
    (root / "masks" / "val").rmdir()
    module = SegFolderDataModule(root=str(root), num_workers=0)
    with pytest.raises(DataError, match=r"val mask folder .*data/masks/val does not exist \(root=.*data layout"):
        module.setup("fit")


def test_without_root_the_split_folders_are_required():
    with pytest.raises(ConfigError, match=r"needs train_images and val_images and class_names: give root"):
        SegFolderDataModule()
