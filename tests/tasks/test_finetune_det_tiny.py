"""``finetune_det_cpu.yaml`` at toy size learns: its encoder (timm's DINOv2 layout, CBSA with the query
broadcast and the local term), its attention transfer and head warm-up, batch-normed pyramid, head, learning
rates, attention kept as transferred, native-size training crops and tiled evaluation, shrunk to width 32 and one
block, started from a timm-named ``.safetensors`` file, on generated images in the config's one-``root`` layout (``images/``, ``train.json``,
``val.json``). It fits its training images: the loss falls and the COCO AP50 on them rises well above zero.
The real run (pretrained ViT-S/14, aerial photos of trees) is measured in docs/finetuning.md."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import cbsa_dense
from cbsa_dense.cli import main
from cbsa_dense.data.demo_det import generate_demo_coco
from tests.tasks.test_finetune_tiny import timm_weights

ENC = "--model.init_args.encoder.init_args."
STEPS = 120


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def one_root(tmp_path):
    """The demo generator's images re-laid as the config expects: root/images, root/train.json, root/val.json
    (validation = the training images: the test asks whether the recipe fits them)."""
    demo = generate_demo_coco(tmp_path / "demo", num_train=8, num_val=2, size_range=(100, 120))
    root = tmp_path / "my_data"
    shutil.copytree(demo / "train", root / "images")
    train = json.loads((demo / "annotations" / "instances_train.json").read_text())
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(train))
    return root


def local_attention_weights(path):
    """``timm_weights``' file with zero-mean attention weights that a pretrained ViT's early block could hold: query
    rows = key rows N(0, 0.5^2) (each token attends mostly to itself and to tokens like it), value rows N(0, 0.2^2),
    no qkv bias. With N(0.3, 0.1) everywhere every key and value shares one large common component: softmax and
    CBSA attention both return about that common value (relative error 8e-6 before any transfer), so the transfer
    has nothing to learn and keeps its start."""
    state = timm_weights(path)
    generator = torch.Generator().manual_seed(1)
    weight, bias = state["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.bias"]
    weight[32:64] = 0.5 * torch.randn(32, 32, generator=generator)
    weight[:32], bias[:] = weight[32:64], 0.0
    weight[64:] = 0.2 * torch.randn(32, 32, generator=generator)
    save_file(state, str(path))


def test_finetune_det_twin_learns_from_timm_weights(tmp_path):
    root = one_root(tmp_path)
    local_attention_weights(tmp_path / "dinov2_tiny.safetensors")
    runs = tmp_path / "runs"
    assert main(["fit", "--config", "finetune_det_cpu.yaml", "--data.init_args.root", str(root),
                 f"{ENC}pretrained", str(tmp_path / "dinov2_tiny.safetensors"),
                 f"{ENC}img_size", "112", f"{ENC}embed_dim", "32", f"{ENC}depth", "1", f"{ENC}num_heads", "2",
                 f"{ENC}attn_layer.init_args.grid", "[2, 2]", "--data.init_args.image_size", "112",
                 "--model.init_args.evaluation.tile_overlap", "24",
                 "--model.init_args.neck.init_args.out_channels", "32",
                 "--model.init_args.head.init_args.num_convs", "1",
                 "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS),
                 "--trainer.log_every_n_steps", "4", "--trainer.enable_progress_bar", "false",
                 "--trainer.logger.init_args.save_dir", str(runs), "--trainer.default_root_dir", str(tmp_path)]) == 0
    run = runs / "finetune_det_cpu" / "version_0"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    # the config's head warm-up trains neck and head first (its first steps: the fresh head's loss), then all of it
    first = float(next(r["head_warmup_loss_first"] for r in rows if r.get("head_warmup_loss_first")))
    warm = float(next(r["head_warmup_loss_last"] for r in rows if r.get("head_warmup_loss_last")))
    last = sum(losses[-3:]) / 3
    assert warm < 0.7 * first and last < 0.7 * first, f"loss {first:.3f} -> {warm:.3f} (warm-up) -> {last:.3f}"
    ap50 = float(next(r["val_map_50"] for r in reversed(rows) if r.get("val_map_50")))
    assert ap50 > 0.3, f"bbox AP50 {ap50:.3f} on the training images"
    assert list((run / "val_predictions").glob("*.png"))                 # ground truth beside predictions
    transfer = json.loads((run / "attention_transfer.json").read_text())["transfer"]   # it ran on these batches
    # ... and matched the softmax attention better, by a margin (measured: held-out loss 0.253 -> 0.167, -34%, best
    # at step 60 of 60; asserted: at least -17%). The kept state is the best held-out one, the start included, so
    # "not worse" would hold whatever the transfer did.
    assert transfer["best_step"] > 0 and transfer["holdout_after"] < 0.83 * transfer["holdout_before"], transfer
    # the checkpoint says how its FCOS head maps distances: exp, the default (one written before the option
    # existed loads as ReLU: tests/test_legacy_checkpoint.py), and the loaded model uses it
    (ckpt,) = (run / "checkpoints").glob("last.ckpt")
    head = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["head"]
    assert head["init_args"]["box_activation"] == "exp", head
    from cbsa_dense.models.heads.det_fcos import ExpConv2d

    assert type(cbsa_dense.load(ckpt).task.model.head.head.regression_head.bbox_reg) is ExpConv2d
