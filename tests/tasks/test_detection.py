"""DetectionTask through the real CLI (fit / validate / test / predict) on a generated COCO-format set.

The fixture has sparse category and image ids, a crowd region and an image without objects.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cbsa_dense.cli import CBSADenseCLI, main
from cbsa_dense.data.demo_det import generate_demo_coco
from cbsa_dense.metrics.coco_map import evaluate_coco

HEADS = {
    "fcos": {"class_path": "cbsa_dense.models.heads.det_fcos.FCOSHead", "init_args": {"num_convs": 1}},
    "mask_rcnn": {"class_path": "cbsa_dense.models.heads.det_mask_rcnn.MaskRCNNHead",
                  "init_args": {"representation_size": 32, "mask_layers": [16], "rpn_post_nms_top_n_train": 50,
                                "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32}},
}


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return generate_demo_coco(tmp_path_factory.mktemp("coco"), num_train=4, num_val=3, size_range=(40, 56))


def _config(tmp_path, root, head: str) -> str:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "limit_val_batches": 1, "log_every_n_steps": 1,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "run"),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "run"), "name": "csv"}}},
        "model": {"class_path": "cbsa_dense.tasks.detection.DetectionTask", "init_args": {
            "results_dir": str(tmp_path / "results"),
            "encoder": {"class_path": "cbsa_dense.models.encoders.ViTEncoder", "init_args": {
                "img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                "attn_layer": {"class_path": "cbsa_dense.layers.CBSAAttention", "init_args": {"grid": [2, 2]}}}},
            "neck": {"class_path": "cbsa_dense.models.necks.simple_fpn.SimpleFeaturePyramid",
                     "init_args": {"out_channels": 32, "strides": [8, 16, 32]}},
            "head": HEADS[head],
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}}},
        "data": {"class_path": "cbsa_dense.data.coco_datamodule.COCODetectionDataModule", "init_args": {
            "root": str(root), "train_json": "annotations/instances_train.json", "train_images": "train",
            "val_json": "annotations/instances_val.json", "val_images": "val", "image_size": 64,
            "with_masks": head == "mask_rcnn", "batch_size": 2, "eval_batch_size": 3, "num_workers": 0}},
    }
    path = tmp_path / f"{head}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _pycocotools(gt_path, results, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return gt, evaluator.stats


@pytest.mark.parametrize("head", ["fcos", "mask_rcnn"])
def test_fit_validate_test_predict_through_cli(tmp_path, coco_root, head):
    config = _config(tmp_path, coco_root, head)
    assert main(["fit", "--config", config]) == 0
    ckpt = tmp_path / "run" / "csv" / "version_0" / "checkpoints" / "epoch=1-step=2.ckpt"
    assert ckpt.is_file()
    metrics = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train_loss" in metrics and "val_map_50" in metrics
    assert main(["validate", "--config", config, "--ckpt_path", str(ckpt)]) == 0

    # output settings given on the command line win over the checkpoint's hyper-parameters
    cli = CBSADenseCLI(args=["test", "--config", config, "--ckpt_path", str(ckpt),
                             "--model.init_args.results_dir", str(tmp_path / "test_out")])
    assert not (tmp_path / "results" / "test_results.json").exists()
    results = json.loads((tmp_path / "test_out" / "test_results.json").read_text())
    assert results, "an untrained FCOS/Mask R-CNN still scores above 0.05 somewhere"
    gt_path = coco_root / "annotations" / "instances_val.json"
    gt_json = json.loads(gt_path.read_text())
    assert {r["image_id"] for r in results} <= {im["id"] for im in gt_json["images"]}
    assert {r["category_id"] for r in results} <= {2, 5, 9}  # original sparse ids
    iou_types = ["bbox", "segm"] if head == "mask_rcnn" else ["bbox"]
    for iou_type in iou_types:
        if iou_type == "segm":
            assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
        gt, ref = _pycocotools(gt_path, [dict(r) for r in results], iou_type)
        key = "test_map" if iou_type == "bbox" else "test_segm_map"
        # the evaluation ran in the task equals pycocotools on the written results json
        assert float(cli.trainer.callback_metrics[key]) == pytest.approx(ref[0], abs=1e-6)
        scored = [{k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")} for r in results]
        assert evaluate_coco(gt, scored, iou_type)["AP"] == pytest.approx(ref[0], abs=1e-6)
    per_class = {k for k in cli.trainer.callback_metrics if k.startswith("test_map_")} - {
        "test_map_50", "test_map_75", "test_map_s", "test_map_m", "test_map_l"}
    assert per_class and per_class <= {"test_map_circle", "test_map_square", "test_map_triangle"}
    assert main(["predict", "--config", config, "--ckpt_path", str(ckpt)]) == 0
    predictions = json.loads((tmp_path / "results" / "predictions.json").read_text())
    assert {p["image_id"] for p in predictions} <= {im["id"] for im in gt_json["images"]}
    assert np.isfinite([p["score"] for p in predictions]).all()


def test_num_classes_mismatch_names_both_numbers(tmp_path, coco_root, capsys):
    from tests.conftest import cli_user_error

    config = _config(tmp_path, coco_root, "fcos")
    line = cli_user_error(["fit", "--config", config, "--model.init_args.num_classes", "5"], capsys)
    assert "num_classes is set by the data" in line


def test_default_recipe_is_vitdet():
    from functools import partial

    import torch

    from cbsa_dense.models.encoders import ViTEncoder
    from cbsa_dense.models.heads.det_fcos import FCOSHead
    from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid
    from cbsa_dense.tasks.detection import DetectionTask
    from cbsa_dense.tasks.schedulers import WarmupStepLR

    task = DetectionTask(ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
                         partial(SimpleFeaturePyramid, out_channels=32, strides=(8, 16)),
                         partial(FCOSHead, num_convs=1), num_classes=2)
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(scheduler, WarmupStepLR)
    assert scheduler.milestones == (0.89, 0.96) and scheduler.warmup_iters == 250
    decayed = [g for g in optimizer.param_groups if g["weight_decay"] > 0]
    assert {g["weight_decay"] for g in decayed} == {0.1}
    lrs = sorted({round(g["initial_lr"] / 1e-4, 6) for g in optimizer.param_groups})
    assert lrs == [round(0.7 ** k, 6) for k in (3, 2, 1, 0)]  # embeddings, block 0, block 1, neck + head
