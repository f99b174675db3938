"""SIGKILL a training run mid-epoch, resume from its last checkpoint, and end with the same weights.

Default suite: the tiny demo_seg twin (8 steps). Slow: the demo model (12 steps)."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.scale.tiny import TINY_SEG, cli, data_args

ROOT = Path(__file__).resolve().parents[2]


def _fit(tmp_path, name, *extra):
    cmd = [sys.executable, "-m", "cbsa_dense.cli", "fit", "--config", str(ROOT / "configs" / "demo_seg.yaml"),
           "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.num_train", "12",
           "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2",
           "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2", "--trainer.deterministic", "true",
           "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / name),
           "--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint",
           "--trainer.callbacks.dirpath", str(tmp_path / name / "ckpt"),
           "--trainer.callbacks.every_n_train_steps", "1", "--trainer.callbacks.save_last", "true", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _tiny_fit(tmp_path, name, *extra):
    ckpt = ["--trainer.callbacks+", "lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", tmp_path / name / "ckpt", "--trainer.callbacks.every_n_train_steps", "1",
            "--trainer.callbacks.save_last", "true"]
    return cli("fit", *TINY_SEG, *data_args(tmp_path / "data", num_train=8, num_val=2, batch_size=2, val_batch_size=2),
               "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2", "--trainer.deterministic", "true",
               "--trainer.logger.init_args.save_dir", tmp_path / name, *ckpt, *extra, cwd=tmp_path)


def test_tiny_sigkill_mid_epoch_then_resume_reaches_identical_weights(tmp_path):
    """4 steps an epoch, 2 epochs; the killed run dies as step 6 starts (mid-epoch 1), with the checkpoint of
    step 5 on disk; resumed from it, it ends bit-identical to the run that was never interrupted."""
    reference = _tiny_fit(tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    killed = _tiny_fit(tmp_path, "killed", "--trainer.callbacks+", "tests.scale.kill_callback.KillAtStep",
                       "--trainer.callbacks.step", "6")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 6
    resumed = _tiny_fit(tmp_path, "killed", "--ckpt_path", last)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, res = _weights(tmp_path / "reference" / "ckpt" / "last.ckpt"), _weights(last)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 8
    assert ref.keys() == res.keys()
    for key in ref:
        torch.testing.assert_close(res[key], ref[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reaches_identical_weights(tmp_path):
    reference = _fit(tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = _fit(tmp_path, "killed", "--trainer.callbacks+", "tests.scale.kill_callback.KillAtStep",
                  "--trainer.callbacks.step", "9")                  # 6 steps per epoch: mid-epoch 1
    assert killed.returncode == -signal.SIGKILL
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 9   # not corrupt

    resumed = _fit(tmp_path, "killed", "--ckpt_path", str(last))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, res = _weights(tmp_path / "reference" / "ckpt" / "last.ckpt"), _weights(last)
    assert ref.keys() == res.keys()
    for key in ref:
        torch.testing.assert_close(res[key], ref[key], rtol=0, atol=0, msg=key)
