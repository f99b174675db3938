"""The bad-input table: each case fails with a message that names the file and the value (or, where a
flag allows, is dropped with a logged count). Nothing is silently trained on."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cbsa_dense.data.ade20k import ADE20KDataModule
from cbsa_dense.data.coco_dataset import load_coco
from cbsa_dense.data.coco_validation import COCOFormatError
from cbsa_dense.data.seg_dataset import SegDataset
from cbsa_dense.data.seg_labels import read_image, read_mask
from cbsa_dense.errors import DataError
from cbsa_dense.models.checkpoint import load_matching, read_state_dict


def _png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _jpeg_bytes(h=32, w=48):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_corrupt_image(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg"):
        read_image(path)


def test_truncated_image(tmp_path):
    path = tmp_path / "truncated.jpg"
    path.write_bytes(_jpeg_bytes()[:300])
    with pytest.raises(DataError, match=r"(?i)cannot read image .*truncated\.jpg: truncated"):
        read_image(path)


def test_mask_size_differs_from_image(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(_jpeg_bytes(32, 48))
    mask = _png(tmp_path / "a.png", np.zeros((30, 48)))
    dataset = SegDataset([(image, mask)], transform=lambda i, m: {"image": i, "mask": m}, num_classes=3)
    with pytest.raises(DataError, match=r"mask .*a\.png is 48x30 \(WxH\) but image .*a\.jpg is 48x32"):
        dataset[0]


def test_mask_labels_out_of_range(tmp_path):
    mask = _png(tmp_path / "m.png", [[0, 1], [7, 2]])
    with pytest.raises(DataError, match=r"mask .*m\.png has values \[7\] outside the 3 classes"):
        read_mask(mask, num_classes=3)


def test_ade_masks_that_look_unreduced(tmp_path):
    mask = _png(tmp_path / "ADE_val_00000001.png", [[0, 1], [150, 75]])
    with pytest.raises(DataError, match=r"values \[150\] outside the 150 classes.*look un-reduced.*reduce_zero_label=True"):
        read_mask(mask, num_classes=150, reduce_zero=False)
    assert read_mask(mask, num_classes=150, reduce_zero=True).tolist() == [[255, 0], [149, 74]]


def test_empty_dataset(tmp_path):
    for split in ("training", "validation"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    datamodule = ADE20KDataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises(DataError, match=r"image folder .*images/training contains no images"):
        datamodule.setup("fit")


def test_coco_json_with_dangling_ids(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
            "categories": [{"id": 3, "name": "cat"}],
            "annotations": [{"id": 5, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0},
                            {"id": 6, "image_id": 1, "category_id": 9, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    with pytest.raises(COCOFormatError, match=r"instances\.json: annotation id 5 refers to image_id 2"):
        load_coco(path)
    coco = load_coco(path, drop_invalid=True)                     # opt-in: drop and log, never train on them
    assert coco.getAnnIds() == []


def test_checkpoint_with_another_class_count_reinitializes_the_head():
    from cbsa_dense.models.encoders import ViTEncoder
    from cbsa_dense.models.heads.linear_head import LinearHead
    from cbsa_dense.models.segmentor import Segmentor

    def build(num_classes):
        torch.manual_seed(num_classes)
        return Segmentor(ViTEncoder(img_size=32, embed_dim=32, depth=1, num_heads=2), LinearHead, num_classes)

    source, target = build(6), build(9)
    fresh_head = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("head.")}
    report = load_matching(target, source.state_dict(), source="six-class checkpoint")
    assert {k for k, _, _ in report.mismatched} == {k for k, v in fresh_head.items() if v.shape[0] == 9}
    for key, value in fresh_head.items():
        if value.shape[0] == 9:
            torch.testing.assert_close(target.state_dict()[key], value)        # head left at its new init
    torch.testing.assert_close(target.encoder.pos_embed, source.encoder.pos_embed)   # encoder loaded


def test_foreign_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _NotATensor()}, path)
    with pytest.raises(ValueError, match=r"cannot read .*foreign\.pth as a weights-only torch checkpoint"):
        read_state_dict(path)


class _NotATensor:
    pass
