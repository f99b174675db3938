"""HeadWarmup: the head (and a detector's neck) learns the frozen encoder's features before fine-tuning."""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from cbsa_dense.callbacks import AttentionTransfer, HeadWarmup
from cbsa_dense.cli import main
from cbsa_dense.errors import ConfigError
from cbsa_dense.layers import CBSAAttention
from cbsa_dense.models.encoders import ViTEncoder
from cbsa_dense.models.heads.det_fcos import FCOSHead
from cbsa_dense.models.heads.linear_head import LinearHead
from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid
from cbsa_dense.tasks import DetectionTask, SegmentationTask
from tests.tasks.test_finetune_tiny import ENC, TWIN, timm_weights
from tests.test_bad_images import make_dataset


def _encoder(**kw) -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                      attn_layer=partial(CBSAAttention, grid=(2, 2), variant="qkv"), **kw)


def _seg_task() -> SegmentationTask:
    return SegmentationTask(_encoder(), LinearHead, num_classes=2)


def _seg_batches(n: int = 4) -> list[dict]:
    """Class 1 where the image is bright, 0 where it is dark: a head can learn it from any features."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n):
        mask = (torch.rand(2, 4, 4, generator=generator) > 0.5).long()
        mask = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)
        batches.append({"image": mask[:, None].float().expand(-1, 3, -1, -1) * 2 - 1, "mask": mask})
    return batches


def _det_task() -> DetectionTask:
    neck = partial(SimpleFeaturePyramid, out_channels=32, strides=[8, 16])
    return DetectionTask(_encoder(), neck, partial(FCOSHead, num_convs=1), num_classes=2)


def _det_batch() -> dict:
    return {"image": torch.randn(2, 3, 32, 32), "image_size": [(32, 32), (30, 28)],
            "boxes": [torch.tensor([[2.0, 3.0, 20.0, 18.0]]), torch.tensor([[8.0, 8.0, 28.0, 30.0], [1, 1, 9, 9]])],
            "labels": [torch.tensor([1]), torch.tensor([0, 1])]}


def test_head_loss_is_the_training_loss_through_the_head_alone():
    """``head_loss(head_inputs(batch))`` is the task's training loss of that batch (the same number), and its
    gradient reaches the head and neck only: the warm-up trains what fine-tuning trains, minus the encoder."""
    seg = _seg_task()
    batch = _seg_batches(1)[0]
    inputs = seg.head_inputs(batch)
    expected = torch.nn.functional.cross_entropy(seg.model(batch["image"]), batch["mask"])
    torch.testing.assert_close(seg.head_loss(inputs), expected)

    det = _det_task().train()
    batch = _det_batch()
    torch.manual_seed(1)
    expected = sum(det.model(batch["image"], batch["image_size"], det._targets(batch)).values())
    inputs = det.head_inputs(batch)
    loss = det.head_loss(inputs)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is None for p in det.model.encoder.parameters())
    assert all(p.grad is not None for p in det.model.head.parameters() if p.requires_grad)
    assert all(p.grad is not None for p in det.model.neck.parameters() if p.requires_grad)


def _trainer(batches, callbacks=(), ckpt_path=None):
    """A trainer whose training loader's epoch is ``batches`` (a list: every pass yields it again)."""
    return SimpleNamespace(ckpt_path=ckpt_path, callbacks=list(callbacks), world_size=1, loggers=[],
                           strategy=SingleDeviceStrategy(device=torch.device("cpu")),
                           datamodule=SimpleNamespace(train_dataloader=lambda: batches))


def test_warmup_trains_the_head_and_leaves_the_encoder(caplog):
    task = _seg_task()
    batches = _seg_batches()
    encoder = {k: v.clone() for k, v in task.model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in task.model.head.state_dict().items()}
    with torch.no_grad():
        before = sum(float(task.head_loss(task.head_inputs(b))) for b in batches)
    callback = HeadWarmup(batches=10, steps=60, lr=1e-2)
    seen = []
    task.head_inputs = lambda batch: seen.append(batch) or SegmentationTask.head_inputs(task, batch)
    with caplog.at_level("INFO"):
        callback.on_train_start(_trainer(batches), task)
    assert callback.done
    # 10 batches kept from an epoch of 4: as many passes over the loader as it takes (a small training set)
    assert len(seen) == 10 and torch.equal(seen[4]["image"], batches[0]["image"])
    assert all(torch.equal(v, task.model.encoder.state_dict()[k]) for k, v in encoder.items())
    assert not any(torch.equal(v, task.model.head.state_dict()[k]) for k, v in head.items())
    with torch.no_grad():
        after = sum(float(task.head_loss(task.head_inputs(b))) for b in batches)
    assert after < 0.5 * before, (before, after)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("head warm-up:")]
    assert "60 steps" in line and "10 training batches in" in line
    first, last = (float(x) for x in line.split("loss ")[1].split(" (")[0].split(" -> "))
    assert last < first


def test_warmup_runs_once_and_after_the_attention_transfer(caplog):
    task = _seg_task()
    batches = _seg_batches()
    head = {k: v.clone() for k, v in task.model.head.state_dict().items()}
    for callback, trainer, reason in [
            (HeadWarmup(steps=2), _trainer(batches, ckpt_path="last.ckpt"), "the run resumes from a checkpoint"),
            (HeadWarmup(steps=2), _trainer(batches), "it has already run")]:
        if reason == "it has already run":
            callback.load_state_dict({"done": True})
        with caplog.at_level("INFO"):
            callback.on_train_start(trainer, task)
        assert callback.done and reason in caplog.text
    assert all(torch.equal(v, task.model.head.state_dict()[k]) for k, v in head.items())
    with pytest.raises(ConfigError, match="lists HeadWarmup before AttentionTransfer"):
        HeadWarmup(steps=2).on_train_start(_trainer(batches, [AttentionTransfer(steps=2)]), task)
    with pytest.raises(ConfigError, match="steps=0 must be a positive integer"):
        HeadWarmup(steps=0)
    with pytest.raises(ConfigError, match="HeadWarmup: the training loader yields no batch"):
        HeadWarmup(steps=2).on_train_start(_trainer([]), task)
    for p in task.model.head.parameters():
        p.requires_grad_(False)
    caplog.clear()
    with caplog.at_level("INFO"):
        HeadWarmup(steps=2).on_train_start(_trainer(batches), task)
    assert "nothing outside the encoder trains" in caplog.text


def test_fit_with_the_warmup_in_a_config(tmp_path, caplog):
    """Listed in a config after AttentionTransfer: it runs in ``fit``, prints its line, saves its state; the
    resumed fit skips it."""
    root = make_dataset(tmp_path / "my_data", size=(30, 44))
    timm_weights(tmp_path / "w.safetensors")
    callbacks = json.dumps([{"class_path": "AttentionTransfer", "init_args": {"steps": 2, "eval_every": 1,
                                                                              "double_size_check": False}},
                            {"class_path": "HeadWarmup", "init_args": {"batches": 2, "steps": 5}},
                            {"class_path": "TaskCheckpoint", "init_args": {"save_weights_only": False}}])
    runs = tmp_path / "runs"
    args = [*TWIN, "--data.init_args.root", str(root), f"{ENC}pretrained", str(tmp_path / "w.safetensors"),
            "--trainer.callbacks", callbacks, "--trainer.val_check_interval", "1",
            "--trainer.logger.init_args.save_dir", str(runs), "--trainer.default_root_dir", str(tmp_path)]
    with caplog.at_level("INFO"):
        assert main([*args, "--trainer.max_steps", "1"]) == 0
    assert "head warm-up: 5 steps on the frozen encoder's features of 2 training batches in" in caplog.text
    ckpt = runs / "finetune_cpu" / "version_0" / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert any(v == {"done": True} for k, v in stored["callbacks"].items() if "HeadWarmup" in k)
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main([*args, "--trainer.max_steps", "2", "--ckpt_path", str(ckpt)]) == 0
    assert "head warm-up: skipped (the run resumes from a checkpoint)" in caplog.text
