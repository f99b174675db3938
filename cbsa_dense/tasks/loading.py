"""Rebuild a task from one of this project's Lightning checkpoints (no training config needed)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from lightning.pytorch import LightningModule


def load_task(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> LightningModule:
    """Load a task (any ``LightningModule`` subclass) from a checkpoint written by ``cbsa-dense fit``.

    The model is rebuilt from the hyper-parameters stored in the checkpoint (LightningCLI saves the
    task's config, ``class_path`` included); ``task.data_info`` holds the class names and normalization
    the datamodule saved.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a Lightning checkpoint of a LightningCLI-built task (names the file).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # Our own checkpoints hold hyper-parameter objects (not only tensors), so weights_only=False here;
    # foreign weight files go through cbsa_dense.models.checkpoint.read_state_dict (weights_only=True).
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    hparams = checkpoint.get("hyper_parameters", {})
    if "_class_path" not in hparams:
        raise ValueError(f"{path} has no '_class_path' hyper-parameter: it was not written by a task built by "
                         f"cbsa-dense (LightningCLI); load it with the task class's load_from_checkpoint instead")
    class_path = hparams["_class_path"]
    if not class_path.startswith("cbsa_dense."):
        raise ValueError(f"{path} holds a {class_path}; only cbsa_dense tasks load by name (import your own "
                         f"task module and use its load_from_checkpoint)")
    importlib.import_module(class_path.rpartition(".")[0])     # Lightning only builds imported classes
    task = LightningModule.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    task.eval()
    return task
