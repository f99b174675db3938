"""Rebuild a task from one of this project's Lightning checkpoints (no training config, no other file).

The task config stored in the checkpoint (LightningCLI's hyper-parameters, ``_class_path`` included) is
instantiated without the files its training run read (encoder ``pretrained``, task ``weights``: their
tensors are in the state dict; :func:`~cbsa_dense.tasks.checkpoint_format.task_hparams`), with the evaluation
protocol the checkpoint records (``evaluation``; older layouts mapped) unless overridden, then the state dict
is loaded. :func:`load_task`, ``<Task>.load_from_checkpoint`` and :func:`cbsa_dense.load` all
go through :func:`task_from_checkpoint`.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cbsa_dense.errors import CheckpointError, ConfigError, UserError

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule

# Lightning, the models and the task modules are imported when a checkpoint is rebuilt, not with this module:
# only the task class the checkpoint names is imported (a segmentation checkpoint needs no detection code).


def load_task(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> LightningModule:
    """Load a task (any ``LightningModule`` subclass) from a checkpoint written by ``cbsa-dense fit``.

    The model is rebuilt from the hyper-parameters stored in the checkpoint, with its evaluation protocol
    (see the module doc), in eval mode; ``task.data_info`` holds the class names and normalization the
    datamodule saved.

    Raises:
        CheckpointError: no such file (also a ``FileNotFoundError``), a directory, a truncated or foreign
            file, or not a Lightning checkpoint of a LightningCLI-built task (names the file).
    """
    from cbsa_dense.models.checkpoint import read_checkpoint

    path = Path(ckpt_path)
    # A weights-only read (LightningCLI stores plain hyper-parameters), with one-line errors for bad files.
    checkpoint = read_checkpoint(path, mmap=True)
    task = task_from_checkpoint(checkpoint, path, map_location)
    task.eval()
    return task


def task_from_checkpoint(checkpoint: dict, path: str | Path, map_location: str | torch.device = "cpu",
                         strict: bool = True, overrides: dict | None = None) -> LightningModule:
    """The task a read checkpoint stores, with its weights (see the module doc).

    Args:
        checkpoint: the read checkpoint (:func:`~cbsa_dense.models.checkpoint.read_checkpoint`).
        path: its file, for messages.
        map_location: device of the loaded tensors.
        strict: strict state-dict loading.
        overrides: task arguments replacing stored ones; ``evaluation`` as a dict replaces the stored
            protocol's fields it names (``{"evaluation": {"scale": [896, 504]}}``).

    Raises:
        CheckpointError: not a Lightning checkpoint of a LightningCLI-built cbsa_dense task (names the file).
    """
    from cbsa_dense.tasks.checkpoint_format import task_hparams

    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'; top-level keys "
                              f"{list(checkpoint)[:8]}): give a checkpoint written by cbsa-dense fit")
    hparams = task_hparams(checkpoint)
    if "_class_path" not in hparams:
        raise CheckpointError(f"{path} has no '_class_path' hyper-parameter: it was not written by a task built "
                              f"by cbsa-dense (LightningCLI); load it with the task class's "
                              f"load_from_checkpoint instead")
    class_path = hparams["_class_path"]
    if not class_path.startswith("cbsa_dense."):
        raise CheckpointError(f"{path} holds a {class_path}; only cbsa_dense tasks load by name (import your "
                              f"own task module and use its load_from_checkpoint)")
    module, _, name = class_path.rpartition(".")
    task_class = getattr(importlib.import_module(module), name)

    config = {k: v for k, v in hparams.items() if k != "_instantiator"}
    overrides = dict(overrides or {})
    if isinstance(overrides.get("evaluation"), dict) and isinstance(config.get("evaluation"), dict):
        overrides["evaluation"] = {**config["evaluation"], **overrides["evaluation"]}   # fields, not the whole
    unknown = sorted(set(overrides) - set(inspect.signature(task_class).parameters))
    if unknown:
        raise ConfigError(f"{', '.join(map(repr, unknown))} is not an argument of {name} (the task {path} holds)")
    config.update(overrides)
    from lightning.pytorch import LightningModule
    from lightning.pytorch.cli import instantiate_module

    try:
        task = instantiate_module(LightningModule, config)
    except Exception as error:        # jsonargparse wraps a constructor's error (raise ... from) in its own
        cause = _user_error_in_chain(error)
        if cause is not None:
            raise cause from error
        from cbsa_dense.config_errors import condense_parse_error

        detail = condense_parse_error(str(error)).removesuffix("; see --help for the accepted options")
        raise CheckpointError(f"the task config stored in {path} does not build a {name}: "
                              f"{detail.replace('--module.init_args.', 'hyper_parameters ')}") from error
    task.on_load_checkpoint(checkpoint)
    state = {k: v.to(map_location) if hasattr(v, "to") else v for k, v in checkpoint["state_dict"].items()}
    task.load_state_dict(state, strict=strict)
    return task.to(map_location)


def _user_error_in_chain(error: BaseException) -> UserError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__
    return None
