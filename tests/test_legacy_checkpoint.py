"""Checkpoints of the previous release kept the evaluation protocol spread out; it is mapped once into the
task's ``evaluation`` (:func:`cbsa_dense.tasks.eval_protocol.legacy_evaluation`).

The checkpoints here are written by hand in the previous layout (not by this release's writer), around the
state dict of a tiny task built in Python (``model.`` keys, as Lightning writes them):

* segmentation: ``hyper_parameters["inference"]`` (a ``SlidingWindowInference`` class_path/init_args dict) and
  ``data_info["eval_scale"]`` (a list, ``None`` for the original size; absent: the default ``(2048, 512)``);
* detection: an ``FCOSHead`` without ``box_activation`` (torchvision's ReLU), ``hyper_parameters["max_detection_thresholds"]`` and ``data_info`` ``image_size``, ``eval_mode``,
  ``tile_overlap``, ``native_scale``, ``train_mode``, ``resize`` (a text rule);
* before that: the same keys in a separate ``checkpoint["eval_protocol"]`` dict.
"""

from __future__ import annotations

import copy
from functools import partial

import lightning
import numpy as np
import pytest
import torch

import cbsa_dense
from cbsa_dense.data.demo_seg import DEMO_CLASSES
from cbsa_dense.tasks.checkpoint_format import task_config
from cbsa_dense.tasks.eval_protocol import DetEvaluation, SegEvaluation

SEG_ENCODER = {"class_path": "cbsa_dense.models.encoders.ViTEncoder",
               "init_args": {"img_size": [32, 32], "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}}
SEG_HEAD = {"class_path": "cbsa_dense.models.heads.linear_head.LinearHead", "init_args": {}}
DET_ENCODER = {"class_path": "cbsa_dense.models.encoders.ViTEncoder",
               "init_args": {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}}
DET_NECK = {"class_path": "cbsa_dense.models.necks.simple_fpn.SimpleFeaturePyramid",
            "init_args": {"out_channels": 32, "strides": [8, 16]}}
DET_HEAD = {"class_path": "cbsa_dense.models.heads.det_fcos.FCOSHead", "init_args": {"num_convs": 1}}
#: What a LightningCLI-built task of the previous release stored besides its parts and its protocol.
COMMON = {"_instantiator": "lightning.pytorch.cli.instantiate_module", "optimizer": None, "lr_scheduler": None,
          "weight_decay": None, "freeze": None, "weights": None, "weights_strict": True, "head_lr_scale": 1.0}

OLD_INFERENCE = {"class_path": "cbsa_dense.tasks.sliding_window.SlidingWindowInference",
                 "init_args": {"window": [32, 32], "stride": [16, 16], "scales": [1.0], "flip": False,
                               "window_batch": 4}}


def _checkpoint(task, hparams: dict, data_info: dict) -> dict:
    """A Lightning checkpoint of the previous release's structure around ``task``'s weights (the keys that
    evaluation reads; no loop or optimizer states)."""
    state_dict = task.state_dict()
    assert state_dict and all(k.startswith("model.") for k in state_dict)
    return {"epoch": 0, "global_step": 2, "pytorch-lightning_version": lightning.__version__,
            "state_dict": state_dict, "hparams_name": "kwargs", "hyper_parameters": hparams, "data_info": data_info}


@pytest.fixture(scope="module")
def old_seg() -> dict:
    """A segmentation checkpoint of the previous release (demo_seg's 6 classes; 32x32 window, stride 16)."""
    from cbsa_dense.models.encoders import ViTEncoder
    from cbsa_dense.models.heads.linear_head import LinearHead
    from cbsa_dense.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    task = SegmentationTask(ViTEncoder(**SEG_ENCODER["init_args"]), LinearHead, num_classes=6)
    hparams = {"_class_path": "cbsa_dense.tasks.SegmentationTask", **COMMON, "layer_decay": None,
               "encoder": copy.deepcopy(SEG_ENCODER), "head": copy.deepcopy(SEG_HEAD), "num_classes": 6,
               "inference": copy.deepcopy(OLD_INFERENCE)}
    info = {"num_classes": 6, "class_names": list(DEMO_CLASSES), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "reduce_zero_label": True, "ignore_index": 255, "palette": [[i * 40, 255 - i * 40, 7 * i] for i in range(6)],
            "eval_scale": [64, 48]}
    return _checkpoint(task, hparams, info)


@pytest.fixture(scope="module")
def old_det() -> dict:
    """A detection checkpoint of the previous release, trained native and evaluated tiled."""
    from cbsa_dense.models.encoders import ViTEncoder
    from cbsa_dense.models.heads.det_fcos import FCOSHead
    from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid
    from cbsa_dense.tasks.detection import DetectionTask

    torch.manual_seed(0)
    task = DetectionTask(ViTEncoder(**DET_ENCODER["init_args"]),
                         partial(SimpleFeaturePyramid, **DET_NECK["init_args"]),
                         partial(FCOSHead, **DET_HEAD["init_args"], box_activation="relu"), num_classes=3)
    hparams = {"_class_path": "cbsa_dense.tasks.DetectionTask", **COMMON, "layer_decay": 0.7,
               "encoder": copy.deepcopy(DET_ENCODER), "neck": copy.deepcopy(DET_NECK),
               "head": copy.deepcopy(DET_HEAD), "num_classes": 3, "max_detection_thresholds": [1, 10, 300]}
    info = {"num_classes": 3, "class_names": ["circle", "square", "triangle"], "category_ids": [2, 5, 9],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": 64, "eval_mode": "tiled",
            "tile_overlap": 8, "native_scale": 1.0, "train_mode": "native",
            "resize": "original size, image_size tiles overlapping by tile_overlap, merged"}
    return _checkpoint(task, hparams, info)


def _save(checkpoint: dict, path) -> str:
    torch.save(checkpoint, path)
    return str(path)


def _same_weights(predictor, checkpoint: dict) -> None:
    loaded = predictor.task.state_dict()
    assert set(loaded) == set(checkpoint["state_dict"])
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(loaded[key], value), key


def _no_old_keys(config: dict) -> dict:
    init = config["init_args"]
    assert "inference" not in init and "max_detection_thresholds" not in init, sorted(init)
    return init["evaluation"]


# ------------------------------------------------------------------------------------------ segmentation
SEG_EXPECTED = SegEvaluation(scale=(64, 48), window=(32, 32), stride=(16, 16), scales=(1.0,), flip=False,
                             window_batch=4)


def test_segmentation_inference_and_eval_scale_become_the_protocol(old_seg, tmp_path):
    path = _save(old_seg, tmp_path / "old_seg.ckpt")
    model = cbsa_dense.load(path)
    assert model.evaluation == SEG_EXPECTED
    _same_weights(model, old_seg)
    evaluation = _no_old_keys(task_config(torch.load(path, weights_only=True)))
    assert evaluation["window"] == [32, 32] and evaluation["stride"] == [16, 16]
    assert list(evaluation["scale"]) == [64, 48] and list(evaluation["scales"]) == [1.0]
    assert not evaluation["flip"] and evaluation["window_batch"] == 4
    assert SegEvaluation(**evaluation) == SEG_EXPECTED
    labels = model.predict(np.zeros((40, 56, 3), np.uint8))
    assert labels.shape == (40, 56)


def test_an_old_segmentation_checkpoint_without_eval_scale_was_evaluated_at_the_default_scale(old_seg, tmp_path):
    checkpoint = copy.deepcopy(old_seg)
    del checkpoint["data_info"]["eval_scale"]
    path = _save(checkpoint, tmp_path / "no_scale.ckpt")
    expected = SegEvaluation(scale=(2048, 512), window=(32, 32), stride=(16, 16))
    assert cbsa_dense.load(path).evaluation == expected
    assert SegEvaluation(**_no_old_keys(task_config(checkpoint))) == expected


def test_an_old_eval_scale_of_none_means_the_original_size(old_seg, tmp_path):
    checkpoint = copy.deepcopy(old_seg)
    checkpoint["data_info"]["eval_scale"] = None
    path = _save(checkpoint, tmp_path / "original.ckpt")
    assert cbsa_dense.load(path).evaluation == SegEvaluation(scale=None, window=(32, 32), stride=(16, 16))


def test_an_old_segmentation_checkpoint_without_inference_ran_whole_images(old_seg, tmp_path):
    checkpoint = copy.deepcopy(old_seg)
    del checkpoint["hyper_parameters"]["inference"]
    path = _save(checkpoint, tmp_path / "whole.ckpt")
    assert cbsa_dense.load(path).evaluation == SegEvaluation(scale=(64, 48))


def test_the_older_eval_protocol_layout_maps_too(old_seg, tmp_path):
    checkpoint = copy.deepcopy(old_seg)
    checkpoint["eval_protocol"] = {"inference": checkpoint["hyper_parameters"].pop("inference"),
                                   "eval_scale": checkpoint["data_info"].pop("eval_scale")}
    path = _save(checkpoint, tmp_path / "older.ckpt")
    model = cbsa_dense.load(path)
    assert model.evaluation == SEG_EXPECTED
    _same_weights(model, checkpoint)
    assert SegEvaluation(**_no_old_keys(task_config(checkpoint))) == SEG_EXPECTED


def test_the_cli_evaluates_an_old_checkpoint_with_its_protocol(old_seg, tmp_path, capsys):
    from cbsa_dense.cli import main

    path = _save(old_seg, tmp_path / "old_seg.ckpt")
    capsys.readouterr()
    assert main(["test", "--ckpt_path", path, "--data", "DemoSegDataModule", "--data.init_args.root",
                 str(tmp_path / "data"), "--data.init_args.num_train", "1", "--data.init_args.num_val", "2",
                 "--data.init_args.image_size", "[48, 64]", "--trainer.enable_progress_bar", "false",
                 "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert ("resize to (long, short) [64, 48], keep ratio; sliding window 32x32, stride 16x16, scales [1.0], "
            "no flip") in err, err


# ------------------------------------------------------------------------------------------ detection
DET_EXPECTED = DetEvaluation(mode="tiled", image_size=64, tile_overlap=8, native_scale=1.0,
                             max_detection_thresholds=(1, 10, 300))


def test_detection_data_info_and_limits_become_the_protocol(old_det, tmp_path):
    path = _save(old_det, tmp_path / "old_det.ckpt")
    model = cbsa_dense.load(path)
    assert model.evaluation == DET_EXPECTED
    assert model.evaluation.tile == (64, 8)
    _same_weights(model, old_det)
    evaluation = _no_old_keys(task_config(torch.load(path, weights_only=True)))
    assert evaluation["mode"] == "tiled" and evaluation["image_size"] == 64 and evaluation["tile_overlap"] == 8
    assert list(evaluation["max_detection_thresholds"]) == [1, 10, 300]
    assert DetEvaluation(**evaluation) == DET_EXPECTED
    result = model.predict(np.zeros((80, 100, 3), np.uint8))
    assert result["boxes"].shape[1:] == (4,)


def test_an_old_fcos_head_keeps_the_relu_it_trained_with(old_det, tmp_path):
    path = _save(old_det, tmp_path / "old_det.ckpt")
    model = cbsa_dense.load(path)
    head = model.task.model.head
    assert head.box_activation == "relu"
    assert type(head.head.regression_head.bbox_reg) is torch.nn.Conv2d
    init = task_config(torch.load(path, weights_only=True))["init_args"]["head"]["init_args"]
    assert init["box_activation"] == "relu" and init["num_convs"] == 1
    features = [torch.randn(1, 32, 8, 8)]
    distances, _ = head.head.regression_head(features)
    assert (distances == 0).any()                 # ReLU's zeros: exp would give none


def test_an_old_native_trained_detector_still_refuses_resize(old_det, tmp_path):
    from cbsa_dense.errors import ConfigError

    model = cbsa_dense.load(_save(old_det, tmp_path / "old_det.ckpt"))
    with pytest.raises(ConfigError, match="resize"):
        model.mode = "resize"


def test_an_old_detector_without_eval_mode_was_evaluated_with_resize(old_det, tmp_path):
    checkpoint = copy.deepcopy(old_det)
    info = checkpoint["data_info"]
    for key in ("eval_mode", "tile_overlap", "resize"):
        del info[key]
    info["train_mode"] = "resize"
    del checkpoint["hyper_parameters"]["max_detection_thresholds"]
    expected = DetEvaluation(mode="resize", image_size=64, native_scale=1.0)
    assert cbsa_dense.load(_save(checkpoint, tmp_path / "resize.ckpt")).evaluation == expected
    assert DetEvaluation(**_no_old_keys(task_config(checkpoint))) == expected


def test_the_older_eval_protocol_layout_maps_for_detection(old_det, tmp_path):
    checkpoint = copy.deepcopy(old_det)
    info = checkpoint["data_info"]
    checkpoint["eval_protocol"] = {
        "image_size": info.pop("image_size"), "eval_mode": info.pop("eval_mode"),
        "tile_overlap": info.pop("tile_overlap"), "native_scale": info.pop("native_scale"),
        "max_detection_thresholds": checkpoint["hyper_parameters"].pop("max_detection_thresholds")}
    model = cbsa_dense.load(_save(checkpoint, tmp_path / "older_det.ckpt"))
    assert model.evaluation == DET_EXPECTED
    _same_weights(model, checkpoint)
    assert DetEvaluation(**_no_old_keys(task_config(checkpoint))) == DET_EXPECTED
