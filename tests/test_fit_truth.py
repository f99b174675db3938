"""A fit tells the truth at its end (issue 23): the per-class table of its last validation (a class the model never
predicts stands out), the per-class metrics in metrics.csv, where the checkpoints are, which parameters started
fresh by design, progress in steps, and no library warning on the small data the demo configs are made for."""

from __future__ import annotations

import csv
import re
import warnings
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader

from cbsa_dense.callbacks.fit_log_interval import FitLogInterval
from cbsa_dense.callbacks.log_progress import _steps_drive
from cbsa_dense.cli import main
from cbsa_dense.data.loaders import available_cpus, worker_count
from cbsa_dense.layers import CBSAAttention
from cbsa_dense.metrics.miou import SegmentationMetrics
from cbsa_dense.models.encoders import ViTEncoder
from cbsa_dense.models.heads.cbt_decoder import CBTDecoder
from cbsa_dense.models.heads.linear_head import LinearHead
from cbsa_dense.models.segmentor import Segmentor
from cbsa_dense.models.weights import load_model_weights
from cbsa_dense.tasks.reporting import LastValidationReport, fit_ends_after_this_validation, per_class_keys
from cbsa_dense.tasks.segmentation import SegmentationTask
from tests.scale.tiny import TINY_SEG


@pytest.fixture(autouse=True)
def _restore_threads():
    """The demo config sets torch's thread count for its process; keep other tests unaffected."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _seg_task(num_classes: int = 3) -> SegmentationTask:
    attn = partial(CBSAAttention, grid=(2, 2))
    encoder = ViTEncoder(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, attn_layer=attn)
    return SegmentationTask(encoder, partial(CBTDecoder, n_layers=1, num_heads=2, attn_layer=attn), num_classes)


# ------------------------------------------------------------------------------------ the per-class table
def test_segmentation_table_marks_the_class_that_is_never_predicted(capsys):
    """The user's case: a 3-class set where "class_1" has pixels but the model never outputs it."""
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 2], [2, 255, 0, 0]])
    pred = torch.tensor([[0, 0, 2, 0], [0, 2, 2, 2], [2, 0, 0, 0]])        # class 1 nowhere
    metric = SegmentationMetrics(3)
    metric.update(pred, target)
    scores = metric.compute()
    assert scores["pred_pixels"].tolist() == [6, 0, 5]                      # the ignored pixel is not counted
    assert scores["label_pixels"].tolist() == [5, 3, 3]
    assert scores["iou"][1].item() == 0.0
    _seg_task()._report_per_class(scores, stage="val", step=7)
    out = capsys.readouterr().out
    assert "per-class IoU of the last validation (step 7): mIoU " in out
    rows = {line.split()[1]: line for line in out.splitlines() if re.match(r"\W+class_\d ", line)}
    assert set(rows) == {"class_0", "class_1", "class_2"}, out
    assert re.search(r"class_1\s+\W\s+0\.00\s+\W\s+0\.00\s+\W\s+never predicted", rows["class_1"]), rows["class_1"]
    assert "never predicted" not in rows["class_0"] + rows["class_2"]
    assert "never predicted: class_1 (no pixel predicted as it: IoU 0)" in out


def test_segmentation_table_notes_classes_absent_from_the_ground_truth(capsys):
    metric = SegmentationMetrics(3)
    metric.update(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 0, 0]))     # 1 predicted, not labelled; 2 absent
    _seg_task()._report_per_class(metric.compute(), stage="val", step=1)
    out = capsys.readouterr().out
    rows = {line.split()[1]: line for line in out.splitlines() if re.match(r"\W+class_\d ", line)}
    assert "not in the ground truth" in rows["class_1"] and "absent" in rows["class_2"]
    assert re.search(r"class_2\s+\W\s+-\s+\W\s+-", rows["class_2"])           # no IoU: not in the mean
    assert "never predicted" not in out


def test_detection_table_and_metrics_name_the_class_never_detected(monkeypatch):
    """A real COCO evaluation (the task's metric): ground truth of 3 classes, no detection of "person"."""
    from cbsa_dense.models.heads.det_fcos import FCOSHead
    from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid
    from cbsa_dense.tasks import detection

    task = detection.DetectionTask(ViTEncoder(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2),
                                   partial(SimpleFeaturePyramid, out_channels=32, strides=(8, 16, 32)),
                                   partial(FCOSHead, num_convs=1), num_classes=3)
    task.class_names = ["car", "person", "traffic sign"]
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    target = {"boxes": boxes, "labels": torch.tensor([0, 1, 2]), "iscrowd": torch.zeros(3, dtype=torch.long),
              "area": torch.full((3,), 100.0)}
    preds = {"boxes": boxes[[0, 2, 2]], "scores": torch.tensor([0.9, 0.8, 0.3]), "labels": torch.tensor([0, 2, 0])}
    task.val_map.update([preds], [target], image_ids=[1])
    logged = {}
    task.log = lambda key, value, **kwargs: logged.__setitem__(key, value)
    task.log_dict = lambda values, **kwargs: logged.update(values)
    result, detections = task._log_map(task.val_map, "val")
    assert detections == [2, 0, 1]
    assert logged["val_map_car"] == pytest.approx(1.0) and logged["val_map_traffic_sign"] == pytest.approx(1.0)
    assert logged["val_map_person"] == 0.0
    assert task.per_class_metric_keys == {"val_map_car", "val_map_person", "val_map_traffic_sign"}
    messages = []
    monkeypatch.setattr(detection, "rank_zero_info", messages.append)
    task._report_per_class(result, detections, stage="val", step=9)
    (message,) = messages
    lines = message.splitlines()
    assert lines[0] == "per-class bbox AP of the last validation (step 9)"
    assert re.fullmatch(r"person\s+0\.0000\s+0\.0000\s+0  never predicted", lines[3]), lines[3]
    assert re.fullmatch(r"car\s+1\.0000\s+1\.0000\s+2", lines[2]), lines[2]
    assert lines[-1] == "never predicted: person (no detection; their AP is 0)"


def test_per_class_metric_keys_are_safe_and_unique():
    names = ["traffic light", "50", "", "a/b", "traffic-light", "Straße"]
    assert per_class_keys(names, "val_map_", taken={"val_map_50", "val_map"}) == [
        "val_map_traffic_light", "val_map_50_1", "val_map_class2", "val_map_a_b", "val_map_traffic_light_4",
        "val_map_Stra_e"]


# ------------------------------------------------------------------------ which validation is the last one
def _trainer(**kwargs):
    state = {"sanity_checking": False, "fn": "fit", "global_step": 10, "current_epoch": 0, "should_stop": False,
             "min_epochs": None, "min_steps": None, "max_steps": -1, "max_epochs": None, "ready": 5,
             "num_training_batches": 5, "is_last_batch": False, **kwargs}
    batch_progress = SimpleNamespace(current=SimpleNamespace(ready=state.pop("ready")))
    return SimpleNamespace(state=SimpleNamespace(fn=state.pop("fn")),
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=batch_progress)), **state)


@pytest.mark.parametrize(("settings", "last"), [
    ({"max_steps": 200, "global_step": 200}, True),                            # max_steps, val_check_interval 100
    ({"max_steps": 200, "global_step": 100}, False),
    ({"max_epochs": 12, "current_epoch": 11}, True),                           # end of the last epoch
    ({"max_epochs": 12, "current_epoch": 9}, False),                           # check_val_every_n_epoch 2: epoch 10
    ({"max_epochs": 12, "current_epoch": 11, "ready": 2}, False),              # val_check_interval 0.5, mid-epoch
    ({"max_epochs": 12, "current_epoch": 11, "ready": 2, "is_last_batch": True}, True),
    ({"max_epochs": 12, "current_epoch": 3, "should_stop": True}, True),      # early stopping
    ({"max_epochs": 12, "current_epoch": 3, "should_stop": True, "min_epochs": 5}, False),   # it may not stop yet
    ({"max_steps": 10, "global_step": 10, "sanity_checking": True}, False),
    ({"max_steps": 10, "global_step": 10, "fn": "validate"}, False),
])
def test_the_last_validation_of_a_fit_is_recognized(settings, last):
    assert fit_ends_after_this_validation(_trainer(**settings)) is last


def test_the_table_goes_out_once_after_the_last_validation_or_at_the_end_of_training():
    printed = []

    def report(scores, stage, step):
        printed.append((scores, stage, step))

    final = LastValidationReport()
    final.remember(_trainer(max_steps=4, global_step=2), "scores at 2")
    final.after_validation(_trainer(max_steps=4, global_step=2), report)
    assert printed == []
    final.remember(_trainer(max_steps=4, global_step=4), "scores at 4")
    final.after_validation(_trainer(max_steps=4, global_step=4), report)
    final.at_train_end(report)
    assert printed == [("scores at 4", "val", 4)]
    # the last validation came before the end (max_steps 5, validation every 2 steps): at the end of training
    early = LastValidationReport()
    early.remember(_trainer(max_steps=5, global_step=4), "scores at 4")
    early.after_validation(_trainer(max_steps=5, global_step=4), report)
    early.remember(_trainer(max_steps=5, global_step=4, sanity_checking=True), "sanity")    # not remembered
    early.at_train_end(report)
    early.at_train_end(report)
    assert printed[1:] == [("scores at 4", "val", 4)]


# ------------------------------------------------------------------------ the whole fit through the CLI
def test_tiny_fit_prints_the_table_once_at_the_end_and_where_the_checkpoints_are(tmp_path, capsys):
    """demo_seg at toy size, 2 epochs of 2 batches, validated after each: one table (the step-4 validation's),
    after the last validation line, then the checkpoint line naming existing files; progress in steps; the
    per-class IoU in metrics.csv; no Lightning warning about the logging interval (the config's 5 steps is
    longer than these epochs) nor about loader workers."""
    args = ["fit", *TINY_SEG[:-2], "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.num_train", "4",
            "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2", "--data.init_args.val_batch_size", "2",
            "--trainer.max_steps", "4", "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path)]
    assert TINY_SEG[-2:] == ["--trainer.enable_progress_bar", "false"]      # left out: LogProgress prints
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "logging interval" in m or "worker" in m], messages
    lines = capsys.readouterr().out.splitlines()
    # progress: steps lead, and max_steps ends this run, so no epoch at all
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in steps] == ["step 2/4 (50%)", "step 4/4 (100%)"], lines
    assert not any("epoch" in line for line in steps)
    validations = [i for i, line in enumerate(lines) if line.startswith("validation at step ")]
    assert [lines[i].split(":")[0] for i in validations] == ["validation at step 2/4", "validation at step 4/4"]
    # the per-class table: once, right after the last validation line
    titles = [i for i, line in enumerate(lines) if line.startswith("per-class IoU")]
    assert len(titles) == 1 and titles[0] == validations[-1] + 1, lines
    assert lines[titles[0]].startswith("per-class IoU of the last validation (step 4): mIoU ")
    table = "\n".join(lines[titles[0]:])
    for name in ("sky", "ground", "disc", "box", "triangle", "ring"):
        assert re.search(rf"\W {name} +\W +(\d+\.\d\d|-) ", table), (name, table)
    # the checkpoint line: the last line of the fit, naming files that exist
    (ckpt_line,) = [line for line in lines if line.startswith("checkpoints: ")]
    assert lines.index(ckpt_line) > titles[0]
    match = re.fullmatch(r"checkpoints: best (\S+) \(val_miou (\d\.\d{4})\), last (\S+)", ckpt_line)
    assert match, ckpt_line
    best, score, last = Path(match[1]), float(match[2]), Path(match[3])
    assert best.is_file() and last.is_file() and last.name == "last.ckpt" and "val_miou" in best.name
    assert best.parent == tmp_path / "runs" / "demo_seg" / "version_0" / "checkpoints"
    assert f"val_miou{score:.4f}" in best.name
    # every validation logged each class's IoU
    with open(tmp_path / "runs" / "demo_seg" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    per_class = [k for k in rows[0] if k.startswith("val_iou_")]
    assert per_class and set(per_class) <= {f"val_iou_{n}" for n in ("sky", "ground", "disc", "box", "triangle", "ring")}
    assert len([r for r in rows if r["val_miou"]]) == 2
    # the training rows: every 2 steps (the epoch), not never (the config's 5 is longer than the run)
    assert [r["step"] for r in rows if r["train_loss"]] == ["1", "3"]


# ------------------------------------------------------------------ pretrained weights: what starts fresh
def _timm_file(tmp_path: Path) -> tuple[Path, dict]:
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    save_file(state, str(tmp_path / "vit.safetensors"))
    return tmp_path / "vit.safetensors", state


def test_fresh_cbsa_parameters_are_reported_as_expected_not_as_missing(tmp_path, caplog):
    path, _ = _timm_file(tmp_path)
    attn = partial(CBSAAttention, grid=(2, 2), variant="qkv")
    with caplog.at_level("INFO", logger="cbsa_dense.models.checkpoint"):
        encoder = ViTEncoder(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, attn_layer=attn,
                             pretrained=str(path))
    (record,) = [r for r in caplog.records if r.name == "cbsa_dense.models.checkpoint"]
    assert record.levelname == "INFO"                                    # nothing is wrong
    lines = record.getMessage().splitlines()
    assert lines[0].startswith("loaded ") and lines[0].endswith(f"tensors from {path} into ViTEncoder")
    assert lines[1:] == ["new parameters, initialized fresh as expected (4: 2 blocks.*.attn.step_x, "
                         "2 blocks.*.attn.step_rep)"]
    assert encoder.blocks[0].attn.step_x.requires_grad
    report = encoder.load_pretrained(str(path))
    assert "missing keys" not in report.summary() and "shape-mismatched" not in report.summary()
    assert not report.problems and len(report.fresh) == 4


def test_encoder_weights_into_a_whole_model_report_the_head_as_fresh(tmp_path, caplog):
    path, _ = _timm_file(tmp_path)
    model = Segmentor(ViTEncoder(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                                 attn_layer=partial(CBSAAttention, grid=(2, 2), variant="qkv")), LinearHead, 4)
    with caplog.at_level("INFO", logger="cbsa_dense.models.checkpoint"):
        report = load_model_weights(model, path)
    heads = [k for k in model.state_dict() if k.startswith("head.")]
    assert report.summary() == (f"new parameters, initialized fresh as expected ({4 + len(heads)}: "
                                f"2 encoder.blocks.*.attn.step_x, 2 encoder.blocks.*.attn.step_rep, "
                                f"{len(heads)} head.*)")
    assert all(r.levelname == "INFO" for r in caplog.records if r.name == "cbsa_dense.models.checkpoint")


# ------------------------------------------------------------------------ progress, log interval, workers
def test_progress_counts_steps_and_drops_the_epoch_when_max_steps_ends_the_run():
    def trainer(max_steps, max_epochs):
        return SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs)

    assert _steps_drive(trainer(200, -1), 200)                 # finetune_cpu: 200 steps, 100 epochs of 2 batches
    assert _steps_drive(trainer(200, 1000), 200)               # the step limit comes first
    assert not _steps_drive(trainer(-1, 12), 240)              # demo_seg: 12 epochs
    assert not _steps_drive(trainer(1000, 2), 40)              # the epoch limit comes first


def test_log_interval_is_at_most_an_epoch():
    def trainer(batches, every=50, limit=1.0):
        datamodule = SimpleNamespace(train_dataloader=lambda: DataLoader(range(batches * 4), batch_size=4))
        return SimpleNamespace(fast_dev_run=False, log_every_n_steps=every, datamodule=datamodule, world_size=1,
                               limit_train_batches=limit)

    for batches, every, limit, expected in ((3, 50, 1.0, 3), (80, 50, 1.0, 50), (80, 50, 10, 10), (80, 50, 0.25, 20)):
        t = trainer(batches, every, limit)
        FitLogInterval().setup(t, None, "fit")
        assert t.log_every_n_steps == expected, (batches, every, limit)
    t = trainer(3)
    FitLogInterval().setup(t, None, "validate")
    assert t.log_every_n_steps == 50


def test_loader_workers_are_capped_at_the_cpus():
    from cbsa_dense.data.demo_seg import DemoSegDataModule

    assert worker_count(10_000) == available_cpus() >= 1
    assert worker_count(0) == 0
    assert DemoSegDataModule(num_workers=10_000).num_workers == available_cpus()
