"""The README's fine-tuning path at toy size: ``finetune_cpu.yaml`` shrunk (tiny timm DINOv2-layout ViT), started
from a timm-named ``.safetensors`` file through ``--model.init_args.encoder.init_args.pretrained``. The real run
(real weights, real photos, the measured mIoU lead) is tests/tasks/test_finetune_real.py (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from cbsa_dense.cli import main
from tests.conftest import cli_user_error
from tests.test_bad_images import make_dataset

ENC = "--model.init_args.encoder.init_args."
#: finetune_cpu.yaml at toy size: its arch (patch 14, LayerScale) at width 32, 1 block, 28x28 crops (2x2 patches).
TWIN = ["fit", "--config", "finetune_cpu.yaml", "--data.init_args.crop_size", "[28, 28]",
        "--data.init_args.scale", "[56, 28]", "--model.init_args.evaluation.scale", "[56, 28]",
        f"{ENC}img_size", "28", f"{ENC}embed_dim", "32", f"{ENC}depth", "1", f"{ENC}num_heads", "2",
        f"{ENC}attn_layer.init_args.grid", "[2, 2]",
        "--trainer.enable_progress_bar", "false"]


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def timm_weights(path: Path, embed_dim: int = 32) -> dict[str, torch.Tensor]:
    """A timm ``vit_small_patch14_dinov2`` state dict at toy width, at timm's own 37x37 position grid, with
    values no initialization produces (N(0.3, 0.1)), saved as safetensors."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model("vit_small_patch14_dinov2", embed_dim=embed_dim, depth=1,
                                                           num_heads=2).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: 0.3 + 0.1 * torch.randn(s, generator=generator) for k, s in shapes.items()}
    save_file(state, str(path))
    return state


def test_finetune_twin_starts_from_timm_weights_and_trains(tmp_path):
    root = make_dataset(tmp_path / "my_data", size=(30, 44))
    weights = timm_weights(tmp_path / "dinov2_tiny.safetensors")
    runs = tmp_path / "runs"
    assert main([*TWIN, "--data.init_args.root", str(root), f"{ENC}pretrained", str(tmp_path / "dinov2_tiny.safetensors"),
                 "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                 "--trainer.logger.init_args.save_dir", str(runs), "--trainer.default_root_dir", str(tmp_path)]) == 0
    (best,) = (runs / "finetune_cpu" / "version_0" / "checkpoints").glob("*val_miou*.ckpt")
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    state = {k.removeprefix("model.encoder."): v for k, v in checkpoint["state_dict"].items()
             if k.startswith("model.encoder.")}
    # every tensor of the file reached the encoder (CBSA qkv variant: timm's qkv/proj as they are); outside the
    # attention, two AdamW steps at lr <= 1e-4 moved it: within 1e-3 of the file, far from any initialization. The
    # config keeps the attention as transferred: the transfer trains only the q/k rows of qkv, so the value rows
    # and proj are the file's exactly.
    for key, value in weights.items():
        if key == "pos_embed":
            continue
        assert key in state, key
        if ".attn.qkv." in key:
            state[key], value = state[key][2 * 32:], value[2 * 32:]
        if ".attn." in key:
            assert torch.equal(state[key], value), f"{key} was fine-tuned: the config freezes the attention"
            continue
        torch.testing.assert_close(state[key], value, atol=1e-3, rtol=0, msg=key)
        assert not torch.equal(state[key], value) or key == "cls_token", f"{key} was not trained"
    # the position embedding was resampled from timm's 37x37 grid to the 2x2 patch grid of 28x28 crops
    assert state["pos_embed"].shape == (1, 1 + 2 * 2, 32)
    assert 0.2 < state["pos_embed"][0, 1:].mean() < 0.4
    # Not in the file, so fresh: exactly the config's CBSA local term of the one block (query broadcast: no step
    # sizes); every other tensor of the encoder came from the file (checked above).
    fresh = {k for k in state if k not in weights}
    assert fresh == {"blocks.0.attn.local.weight", "blocks.0.attn.local.bias"}, sorted(fresh)
    assert set(state) == set(weights) | fresh
    assert state["blocks.0.attn.local.weight"].shape == (32, 1, 3, 3)           # 3x3 depthwise over the values


def test_finetune_twin_refuses_weights_of_another_width(tmp_path, capsys):
    root = make_dataset(tmp_path / "my_data", size=(30, 44))
    timm_weights(tmp_path / "wide.safetensors", embed_dim=48)
    line = cli_user_error([*TWIN, "--data.init_args.root", str(root), f"{ENC}pretrained", str(tmp_path / "wide.safetensors"),
                           "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path),
                           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")], capsys)
    assert "wide.safetensors does not fit the ViTEncoder" in line, line
    assert "blocks.0.attn.qkv.bias file (144,) vs model (96,)" in line, line        # the key and both shapes
    assert "pretrained_strict: false" in line, line


def test_finetune_twin_refuses_frozen_attention_without_weights(tmp_path, capsys):
    """The config freezes the attention; without pretrained weights it would stay random for the whole run."""
    root = make_dataset(tmp_path / "my_data", size=(30, 44))
    line = cli_user_error([*TWIN, "--data.init_args.root", str(root), "--trainer.max_steps", "1",
                           "--trainer.default_root_dir", str(tmp_path),
                           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")], capsys)
    assert "model freeze=['model.encoder.blocks.*.attn.*'] would keep model.encoder.blocks.0.attn." in line, line
    assert "random initialization" in line and "pretrained: null" in line, line
    assert "--model.init_args.freeze null" in line, line
    assert not list((tmp_path / "runs").rglob("*.ckpt"))                       # stopped before any step
