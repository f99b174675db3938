"""One reading of a stored run: what ``fit``/``validate``/``test``/``predict --ckpt_path`` take from a checkpoint.

The checkpoint file is read once per command (:meth:`StoredRun.read`: checked, tensors memory-mapped).
That read serves everything:

* the task config it stores (LightningCLI's hyper-parameters: encoder, head, the evaluation protocol
  ``evaluation``, optimizer ...) is replayed once, as defaults: it is given to the parser as the first
  ``--model``, before the ``--config`` files and the other arguments, so the precedence is command line >
  ``--config`` > checkpoint (:func:`prepare_args`), for the evaluation protocol as for everything else (the
  CLI links it into the datamodule). Arguments the CLI links from the data (``num_classes``) and files the
  training read (``pretrained``, ``weights``) are left out
  (:func:`~cbsa_dense.tasks.checkpoint_format.task_config`);
* Lightning's restore (weights, loops, callbacks) gets the same dict through :class:`ServedCheckpointIO`
  instead of reading the file again;
* the evaluation folder and the class-count check.

LightningCLI would replay the stored hyper-parameters itself, over the command line, after reading the
file again; it does so only for a ``ckpt_path`` that is a file when the parser returns. So the path is
taken out of the arguments it parses (:func:`prepare_args`) and put back into the parsed config in
``before_instantiate_classes`` (:meth:`CBSADenseCLI.before_instantiate_classes
<cbsa_dense.cli.lightning_cli.CBSADenseCLI.before_instantiate_classes>`), where Lightning's ``fit``/``test``
... calls take it from.

Checkpoints of earlier versions load: their layouts and the protocol settings they kept elsewhere
(``data_info``, ``eval_protocol``) are mapped once, by :func:`~cbsa_dense.tasks.checkpoint_format.task_hparams`,
which the Python loaders (:mod:`cbsa_dense.tasks.loading`, :func:`cbsa_dense.load`) use too.

The private names of Lightning this relies on, and the ones it no longer needs, are listed with their reasons
in :mod:`cbsa_dense.cli.private_api`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import CheckpointIO

from cbsa_dense.models.checkpoint import read_checkpoint
from cbsa_dense.tasks.checkpoint_format import FILE_ARGS, check_task_class, stored_num_classes, task_config

__all__ = ["StoredRun", "ServedCheckpointIO", "prepare_args", "drop_weight_files"]

_SUBCOMMANDS = ("fit", "validate", "test", "predict")


@dataclass
class StoredRun:
    """A ``--ckpt_path`` checkpoint, read once.

    Attributes:
        path: the file as given.
        checkpoint: its contents (tensors memory-mapped).
    """

    path: str
    checkpoint: dict

    @classmethod
    def read(cls, path: str | Path) -> StoredRun:
        """Read and check ``path``: a readable Lightning checkpoint (else a one-line ``CheckpointError``)."""
        from cbsa_dense.errors import CheckpointError

        checkpoint = read_checkpoint(path, mmap=True)
        if "state_dict" not in checkpoint:
            raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'; top-level keys "
                                  f"{list(checkpoint)[:8]}): --ckpt_path takes a checkpoint of a cbsa-dense run; "
                                  f"to start from other weights use --model.init_args.weights")
        return cls(str(path), checkpoint)

    def task_config(self) -> dict | None:
        """The stored task config to replay (``None``: no LightningCLI task recorded)."""
        return task_config(self.checkpoint)

    @property
    def num_classes(self) -> int | None:
        """The class count the model was trained for."""
        return stored_num_classes(self.checkpoint)

    def check_task(self, task: object | None, subcommand: str) -> None:
        """CheckpointError when the config builds another task class than the checkpoint holds."""
        if task is None:
            return
        own = str(getattr(task, "__name__", task)).rpartition(".")[2]
        hint = (f"resume from a checkpoint of a {own} run, or use the config that checkpoint was trained with"
                if subcommand == "fit" else
                f"give a checkpoint of a {own} run, or leave out --config/--model ({subcommand} then rebuilds "
                f"the task stored in the checkpoint)")
        check_task_class(self.checkpoint, self.path, task, hint=hint)


class ServedCheckpointIO(CheckpointIO):
    """Lightning's checkpoint IO, except that loading ``path`` returns the checkpoint read already.

    Wraps the strategy's own IO (saving and removing go to it unchanged)."""

    def __init__(self, inner: CheckpointIO, stored: StoredRun) -> None:
        self.inner = inner
        self.stored = stored

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        if Path(path).resolve() == Path(self.stored.path).resolve():
            return self.stored.checkpoint
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


#: ``--ckpt_path`` values that Lightning resolves itself (not file paths).
LIGHTNING_CKPT_ALIASES = ("best", "last", "hpc", "registry")

#: YAML's spellings of null: ``--ckpt_path null`` means no checkpoint, as in a config file.
_NULLS = ("null", "~")


def _ckpt_arg(argv: list[str]) -> tuple[int, int, str] | None:
    """``(start, end, value)`` of the ``--ckpt_path X`` / ``--ckpt_path=X`` in argv (end exclusive)."""
    for index, arg in enumerate(argv):
        if arg == "--ckpt_path" and index + 1 < len(argv):
            return index, index + 2, argv[index + 1]
        if arg.startswith("--ckpt_path="):
            return index, index + 1, arg.split("=", 1)[1]
    return None


def _flag(argv: list[str], name: str) -> tuple[int, int, str] | None:
    """``(start, end, value)`` of ``name X`` / ``name=X`` in argv (end exclusive)."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return index, index + 2, argv[index + 1]
        if arg.startswith(name + "="):
            return index, index + 1, arg.split("=", 1)[1]
    return None


def images_to_data(argv: list[str]) -> list[str]:
    """``predict --images X`` (a folder, an image file or a glob) stands for ``--data PredictImagesDataModule
    --data.init_args.images X``: prediction from a checkpoint alone, without the training data's config. So
    does ``--data.init_args.predict_images X`` when neither ``--data`` nor ``--config`` names a datamodule.

    Raises:
        ConfigError: ``--images`` with another subcommand than ``predict``.
    """
    found = _flag(argv, "--images")
    if found is None:
        if not argv or argv[0] != "predict" or any(a in ("--data", "--config") or a.startswith(("--data=", "--config="))
                                                   for a in argv):
            return argv
        found = _flag(argv, "--data.init_args.predict_images")
        if found is None:
            return argv
    from cbsa_dense.errors import ConfigError

    if not argv or argv[0] != "predict":
        raise ConfigError("--images is an option of cbsa-dense predict only (the images to predict with --ckpt_path); "
                          "fit, validate and test read their images from the data config: give it with --config / "
                          "--data")
    start, end, value = found
    return [*argv[:start], "--data", "cbsa_dense.data.PredictImagesDataModule", "--data.init_args.images", value,
            *argv[end:]]


def prepare_args(argv: list[str]) -> tuple[list[str], StoredRun | None]:
    """Read a ``fit``/``validate``/``test``/``predict`` command's ``--ckpt_path`` file once and replay its task
    config as defaults: returns the arguments to parse (``--model <stored config>`` right after the
    subcommand, ``--ckpt_path`` taken out) and the read run. Other commands, Lightning's aliases (``last``,
    ``best`` ...) and remote paths come back unchanged, with ``None``. ``predict --images X`` becomes its data
    (:func:`images_to_data`); a ``predict --ckpt_path`` with no data at all is told to give ``--images``."""
    argv = images_to_data(argv)
    found = _ckpt_arg(argv)
    if not argv or argv[0] not in _SUBCOMMANDS or found is None:
        return argv, None
    start, end, value = found
    if value.split(":")[0] in LIGHTNING_CKPT_ALIASES or "://" in value or value.lower() in _NULLS:
        return argv, None
    stored = StoredRun.read(value)
    if argv[0] == "fit" and "optimizer_states" not in stored.checkpoint:
        from cbsa_dense.errors import CheckpointError

        raise CheckpointError(f"{value} holds weights only (saved with save_weights_only: no optimizer, scheduler "
                              "or loop state), so fit cannot resume from it: start a new fit from its weights with "
                              f"--model.init_args.weights {value}, or resume from a full checkpoint")
    rest = argv[1:start] + argv[end:]
    if argv[0] == "predict" and not any(a in ("--data", "--config") or a.startswith(("--data=", "--config="))
                                        for a in rest):
        from cbsa_dense.errors import ConfigError

        raise ConfigError(f"predict --ckpt_path {value}: give the images to predict with --images (a folder, an "
                          "image file or a glob such as 'photos/*.jpg'), or a data config with --config / --data")
    config = stored.task_config()
    replay = ["--model", json.dumps(config)] if config is not None else []
    return [argv[0], *replay, *rest], stored


def drop_weight_files(config) -> list[str]:
    """Set every file-reading model argument (an encoder's ``pretrained``, the task's ``weights``) of a parsed
    config to ``None``: with ``--ckpt_path`` the weights come from the checkpoint, so those files (often left
    behind on the training machine) are not read. Returns the keys it cleared."""
    init_args = getattr(config.get("model"), "init_args", None)
    if init_args is None:
        return []
    cleared = [key for key, value in init_args.items()
               if key.rpartition(".")[2] in FILE_ARGS and isinstance(value, str)]
    for key in cleared:
        init_args[key] = None
    return cleared
