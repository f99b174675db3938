"""``global_batch_size``: the total training batch per optimizer step, divided over devices at setup."""

from types import SimpleNamespace

import pytest
import torch

from cbsa_dense.data import global_batch
from cbsa_dense.data.ade20k import ADE20KDataModule
from cbsa_dense.data.coco_datamodule import COCODetectionDataModule
from cbsa_dense.data.demo_det import DemoDetectionDataModule
from cbsa_dense.data.demo_seg import DemoSegDataModule
from cbsa_dense.data.seg_datamodule import SegDataModule
from cbsa_dense.data.seg_folder import SegFolderDataModule
from cbsa_dense.errors import ConfigError


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        return torch.tensor([index])


class _TinySeg(SegDataModule):
    def __init__(self, num_classes, **kwargs):
        super().__init__(num_classes, num_workers=0, **kwargs)

    def make_dataset(self, split):
        return _Items()


def _trainer(world_size, accumulate=1):
    return SimpleNamespace(world_size=world_size, accumulate_grad_batches=accumulate)


@pytest.fixture
def info_lines(monkeypatch):
    lines = []
    monkeypatch.setattr(global_batch, "rank_zero_info", lines.append)
    return lines


@pytest.mark.parametrize("world_size, per_device", [(1, 8), (2, 4), (4, 2)])
def test_seg_global_batch_is_divided_over_the_devices(world_size, per_device, info_lines):
    dm = _TinySeg(num_classes=3, global_batch_size=8)
    dm.trainer = _trainer(world_size)
    dm.setup("fit")
    assert dm.batch_size == per_device
    assert dm.train_dataloader().batch_size == per_device
    assert info_lines == [f"global_batch_size=8: training batch {per_device} per device "
                          f"({world_size} device{'s' if world_size > 1 else ''})"]


def test_seg_global_batch_that_does_not_divide_is_a_config_error():
    dm = _TinySeg(num_classes=3, global_batch_size=8)
    dm.trainer = _trainer(3)
    with pytest.raises(ConfigError) as error:
        dm.setup("fit")
    assert str(error.value) == ("global_batch_size=8 does not divide over 3 devices (world size 3); use a "
                                "multiple of 3 or set batch_size per device")


def test_gradient_accumulation_is_part_of_the_total(info_lines):
    dm = _TinySeg(num_classes=3, global_batch_size=8)
    dm.trainer = _trainer(2, accumulate=2)
    assert dm.train_dataloader().batch_size == 2                    # 2 devices x 2 accumulated x 2 = 8
    assert info_lines == ["global_batch_size=8: training batch 2 per device (2 devices x 2 accumulated batches)"]
    dm = _TinySeg(num_classes=3, global_batch_size=8)
    dm.trainer = _trainer(2, accumulate=3)
    with pytest.raises(ConfigError, match=r"accumulate_grad_batches 3\); use a multiple of 6"):
        dm.train_dataloader()


def test_eval_stages_and_unset_global_batch_leave_batch_size_alone(info_lines):
    dm = _TinySeg(num_classes=3, batch_size=5)
    dm.trainer = _trainer(4)
    dm.setup("fit")
    assert dm.train_dataloader().batch_size == 5 and info_lines == []
    dm = _TinySeg(num_classes=3, global_batch_size=8)
    dm.trainer = _trainer(3)                                        # would not divide: not needed to test
    dm.setup("test")
    assert dm.batch_size == 8 and info_lines == []


def test_logged_once_without_a_trainer_one_device(info_lines):
    dm = _TinySeg(num_classes=3, global_batch_size=6)
    dm.setup("fit")
    dm.train_dataloader()
    assert dm.batch_size == 6 and len(info_lines) == 1


@pytest.mark.parametrize("make", [
    lambda **kw: _TinySeg(num_classes=3, **kw),
    lambda **kw: ADE20KDataModule(**kw),
    lambda **kw: DemoSegDataModule(**kw),
    lambda **kw: SegFolderDataModule(train_images="a", val_images="b", class_names=["x", "y"], **kw),
    lambda **kw: COCODetectionDataModule(**kw),
    lambda **kw: DemoDetectionDataModule(**kw),
])
def test_every_datamodule_takes_global_batch_size_and_rejects_both(make):
    assert make(global_batch_size=8).global_batch_size == 8        # batch_size left at its default
    with pytest.raises(ConfigError, match="batch_size=3 and global_batch_size=8 are both set"):
        make(batch_size=3, global_batch_size=8)
    with pytest.raises(ConfigError, match="global_batch_size=0 is invalid"):
        make(global_batch_size=0)


@pytest.mark.parametrize("world_size, per_device", [(1, 8), (2, 4), (4, 2), (3, None)])
def test_coco_global_batch(world_size, per_device, info_lines):
    dm = COCODetectionDataModule(global_batch_size=8)
    dm.trainer = _trainer(world_size)
    dm.datasets["train"] = _Items()
    if per_device is None:
        with pytest.raises(ConfigError, match="does not divide over 3 devices"):
            dm.train_dataloader()
        assert dm.eval_batch_size == 2                              # evaluation: its share, never an error
        return
    assert dm.eval_batch_size == per_device
    assert dm.train_dataloader().batch_size == per_device
    assert dm.batch_size == dm.eval_batch_size == per_device        # eval default: the per-device batch
    assert len(info_lines) == 1
    assert COCODetectionDataModule(global_batch_size=8, eval_batch_size=1).eval_batch_size == 1
