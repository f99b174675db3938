"""Command-line arguments of the tiny demo-segmentation twin the default-suite scale tests run: demo_seg.yaml
with 48x64 images, a 1-block width-32 ViT and a 1-layer decoder (about 20 k parameters)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_ENC = "--model.init_args.encoder.init_args."
_HEAD = "--model.init_args.head.init_args."

#: demo_seg.yaml shrunk: images, crops, model and sliding window (the data root and counts are the test's).
TINY_SEG = ["--config", str(ROOT / "configs" / "demo_seg.yaml"),
            "--data.init_args.image_size", "[48, 64]", "--data.init_args.crop_size", "[48, 48]",
            "--data.init_args.scale", "[128, 48]",
            f"{_ENC}img_size", "[48, 48]", f"{_ENC}embed_dim", "32", f"{_ENC}depth", "1", f"{_ENC}num_heads", "2",
            f"{_HEAD}n_layers", "1", f"{_HEAD}num_heads", "2", f"{_HEAD}attn_layer.init_args.head_dim", "16",
            "--model.init_args.evaluation.window", "[48, 48]",
            "--model.init_args.evaluation.stride", "[32, 32]",
            "--trainer.enable_progress_bar", "false"]


def data_args(root: Path, num_train: int, num_val: int, batch_size: int, val_batch_size: int) -> list[str]:
    return ["--data.init_args.root", str(root), "--data.init_args.num_train", str(num_train),
            "--data.init_args.num_val", str(num_val), "--data.init_args.batch_size", str(batch_size),
            "--data.init_args.val_batch_size", str(val_batch_size)]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``cbsa-dense ARGS`` in a subprocess (DDP launches its ranks as copies of the command), from ``cwd``
    with the checkout on the path (test callbacks: ``tests.scale.kill_callback.KillAtStep``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "cbsa_dense.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)
