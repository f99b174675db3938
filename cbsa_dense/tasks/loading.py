"""Rebuild a task from one of this project's Lightning checkpoints (no training config needed)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from lightning.pytorch import LightningModule

from cbsa_dense.errors import CheckpointError
from cbsa_dense.models.checkpoint import read_checkpoint


def load_task(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> LightningModule:
    """Load a task (any ``LightningModule`` subclass) from a checkpoint written by ``cbsa-dense fit``.

    The model is rebuilt from the hyper-parameters stored in the checkpoint (LightningCLI saves the
    task's config, ``class_path`` included); ``task.data_info`` holds the class names and normalization
    the datamodule saved.

    Raises:
        CheckpointError: no such file (also a ``FileNotFoundError``), a directory, a truncated or foreign
            file, or not a Lightning checkpoint of a LightningCLI-built task (names the file).
    """
    path = Path(ckpt_path)
    # A weights-only read (LightningCLI stores plain hyper-parameters), with one-line errors for bad files.
    checkpoint = read_checkpoint(path, mmap=True)
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'; top-level keys "
                              f"{list(checkpoint)[:8]}): give a checkpoint written by cbsa-dense fit")
    hparams = checkpoint.get("hyper_parameters") or {}
    if "_class_path" not in hparams:
        raise CheckpointError(f"{path} has no '_class_path' hyper-parameter: it was not written by a task built "
                              f"by cbsa-dense (LightningCLI); load it with the task class's "
                              f"load_from_checkpoint instead")
    class_path = hparams["_class_path"]
    if not class_path.startswith("cbsa_dense."):
        raise CheckpointError(f"{path} holds a {class_path}; only cbsa_dense tasks load by name (import your "
                              f"own task module and use its load_from_checkpoint)")
    importlib.import_module(class_path.rpartition(".")[0])     # Lightning only builds imported classes
    if "model" in hparams and "encoder" not in hparams:
        task = _load_first_release(checkpoint, map_location)
    else:
        task = LightningModule.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    task.eval()
    return task


def _load_first_release(checkpoint: dict, map_location) -> LightningModule:
    """A segmentation checkpoint of 0.1 (``model: Segmentor(...)`` hyper-parameters): the task is built from
    the same config in this release's layout (:func:`~cbsa_dense.models.checkpoint.task_hparams`); the
    state-dict keys did not change."""
    from lightning.pytorch.cli import instantiate_module

    from cbsa_dense.models.checkpoint import task_hparams

    config = {k: v for k, v in task_hparams(checkpoint).items() if k != "_instantiator"}
    task = instantiate_module(LightningModule, config)
    task.on_load_checkpoint(checkpoint)
    state = {k: v.to(map_location) if hasattr(v, "to") else v for k, v in checkpoint["state_dict"].items()}
    task.load_state_dict(state)
    return task
