"""SIGKILL a training run mid-epoch, resume from its last checkpoint, and end with the same weights."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
