"""TaskCheckpoint: one callback preset for both tasks; each task names the metric that ranks checkpoints."""

import pytest
import torch

from cbsa_dense.callbacks import TaskCheckpoint


def test_segmentation_run_keeps_the_best_by_val_miou_and_last(seg_run):
    folder = next((seg_run / "runs").rglob("checkpoints"))
    names = sorted(p.name for p in folder.glob("*.ckpt"))
    best = [n for n in names if "-val_miou" in n]
    assert "last.ckpt" in names and len(best) == 1 and best[0].startswith("epoch00-step"), names
    states = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["callbacks"]
    (state,) = [v for k, v in states.items() if k.startswith("TaskCheckpoint")]
    assert state["monitor"] == "val_miou" and float(state["best_model_score"]) >= 0.0


def test_detection_run_ranks_by_val_map(det_ckpt):
    states = torch.load(det_ckpt, map_location="cpu", weights_only=False)["callbacks"]
    (state,) = [v for k, v in states.items() if k.startswith("TaskCheckpoint")]
    assert state["monitor"] == "val_map"


class _Task:
    checkpoint_monitor = ("val_loss", "min")


class _Trainer:
    """Just what ModelCheckpoint.setup reads."""

    def __init__(self, root):
        self.default_root_dir, self.loggers, self.logger, self.is_global_zero = str(root), [], None, False
        self.strategy = type("S", (), {"broadcast": staticmethod(lambda x: x)})()


def test_monitor_and_mode_come_from_the_task_unless_given(tmp_path):
    checkpoint = TaskCheckpoint()
    checkpoint.setup(_Trainer(tmp_path), _Task(), "fit")
    assert (checkpoint.monitor, checkpoint.mode) == ("val_loss", "min")
    assert float(checkpoint.kth_value) == float("inf") and "val_loss{val_loss:.4f}" in checkpoint.filename
    explicit = TaskCheckpoint(monitor="val_aacc", mode="max", filename="best")
    explicit.setup(_Trainer(tmp_path), _Task(), "fit")
    assert (explicit.monitor, explicit.mode, explicit.filename) == ("val_aacc", "max", "best")
    with pytest.raises(ValueError, match="mode='low'"):
        TaskCheckpoint(mode="low").setup(_Trainer(tmp_path), _Task(), "fit")


def test_last_ckpt_is_the_latest_validation_also_when_it_did_not_improve(tmp_path):
    """Lightning 2.6 writes last.ckpt only together with a new best file; a validation that does not improve
    (here every one after the first: the best is the lowest step) must still leave last.ckpt at its step."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    checkpoint = TaskCheckpoint(monitor="step", mode="min", dirpath=tmp_path)
    trainer = Trainer(max_steps=6, val_check_interval=2, limit_val_batches=1, callbacks=[checkpoint], logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(BoringModel())
    best = [p.name for p in tmp_path.glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1 and best[0].startswith("epoch00-step2-"), best
    assert torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6
    assert checkpoint.last_model_path == str(tmp_path / "last.ckpt")
