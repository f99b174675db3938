"""The synthetic demo set: deterministic, COCO-valid, with sparse ids, a crowd region and an empty image."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from cbsa_dense.data.coco_dataset import load_coco
from cbsa_dense.data.demo_det import DemoDetectionDataModule, generate_demo_coco


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_complete(tmp_path):
    a = generate_demo_coco(tmp_path / "a", num_train=5, num_val=3, size_range=(40, 48))
    b = generate_demo_coco(tmp_path / "b", num_train=5, num_val=3, size_range=(40, 48))
    assert _digest(a) == _digest(b)
    for split in ("train", "val"):
        data = json.loads((a / "annotations" / f"instances_{split}.json").read_text())
        assert [c["id"] for c in data["categories"]] == [2, 5, 9]
        assert len({im["id"] for im in data["images"]}) == len(data["images"])
        with_objects = {ann["image_id"] for ann in data["annotations"]}
        assert any(im["id"] not in with_objects for im in data["images"]), "an image without objects"
        crowd = [ann for ann in data["annotations"] if ann["iscrowd"]]
        assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"]["counts"], list)
        kinds = {type(ann["segmentation"]).__name__ for ann in data["annotations"] if not ann["iscrowd"]}
        assert kinds <= {"list", "dict"}
        assert min(ann["id"] for ann in data["annotations"]) >= 1
        load_coco(a / "annotations" / f"instances_{split}.json", a / split)  # passes validation


def test_changed_arguments_regenerate_and_datamodule_generates_on_first_use(tmp_path):
    root = generate_demo_coco(tmp_path / "d", num_train=3, num_val=2, size_range=(40, 44))
    first = _digest(root)
    assert _digest(generate_demo_coco(root, num_train=3, num_val=2, size_range=(40, 44))) == first
    assert _digest(generate_demo_coco(root, num_train=4, num_val=2, size_range=(40, 44))) != first
    dm = DemoDetectionDataModule(root=str(tmp_path / "fresh"), num_train=3, num_val=2, size_range=(40, 44),
                                 image_size=48, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.category_ids == [2, 5, 9] and dm.class_names[0] == "circle"
    assert len(dm.datasets["train"]) == 2 and len(dm.datasets["val"]) == 2  # the empty image: eval only


def test_num_threads_is_applied_at_setup(tmp_path):
    before = torch.get_num_threads()
    try:
        dm = DemoDetectionDataModule(root=str(tmp_path / "t"), num_train=2, num_val=2, size_range=(40, 40),
                                     num_threads=1, num_workers=0)
        dm.setup("validate")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="num_threads"):
        DemoDetectionDataModule(num_threads=0)
