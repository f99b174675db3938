"""One reading of a stored run: what ``fit``/``validate``/``test``/``predict --ckpt_path`` take from a checkpoint.

The checkpoint file is read once per command (:meth:`StoredRun.read`: checked, tensors memory-mapped).
That read serves everything:

* the task config it stores (LightningCLI's hyper-parameters: encoder, head, the evaluation
  ``inference`` / ``max_detection_thresholds``, optimizer ...) is replayed once, as defaults: it is given
  to the parser as the first ``--model``, before the ``--config`` files and the other arguments, so the
  precedence is command line > ``--config`` > checkpoint (:func:`prepare_args`). Arguments the CLI links
  from the data (``num_classes``) and files the training read (``pretrained``, ``weights``) are left out
  (:func:`~cbsa_dense.models.checkpoint.task_config`);
* the data's evaluation settings it records (``eval_scale``, detection ``image_size``) fill the data
  config where neither the command line nor a config sets them (:func:`apply_eval_settings`), and the
  command prints the protocol it uses and where each part came from;
* Lightning's restore (weights, loops, callbacks) gets the same dict through :class:`ServedCheckpointIO`
  instead of reading the file again;
* the evaluation folder and the class-count check.

LightningCLI would replay the stored hyper-parameters itself, over the command line, after reading the
file again; it does so only for a ``ckpt_path`` that is a file when the parser returns. So the path is
taken out of the arguments it parses (:func:`prepare_args`) and put back into the parsed config in
``before_instantiate_classes`` (:meth:`CBSADenseCLI.before_instantiate_classes
<cbsa_dense.cli.lightning_cli.CBSADenseCLI.before_instantiate_classes>`), where Lightning's ``fit``/``test``
... calls take it from.

Checkpoints of earlier versions load: the first release's hyper-parameter layout
(:func:`~cbsa_dense.models.checkpoint.task_hparams`), and the separate ``checkpoint["eval_protocol"]`` in
which evaluation settings travelled before they were ordinary hyper-parameters and ``data_info``.

What a checkpoint stores is read by :mod:`cbsa_dense.models.checkpoint` (no Lightning: the file, the task
config in this release's layout, the evaluation settings); the Python loaders
(:mod:`cbsa_dense.tasks.loading`, :func:`cbsa_dense.load`) rebuild a task from the same functions.

Public ways used instead of private names: LightningCLI's replay (``_parse_ckpt_path``) is no longer
overridden (the path is held back from it, see above); parse errors come back to the CLI through the
parsers' ``exit_on_error`` argument (``parser_kwargs``), not by setting it on ``_subcommand_parsers``;
YAML is read with jsonargparse's ``get_loader("yaml")`` (:func:`cbsa_dense.cli.config_files.parse_yaml`); the
evaluation folder is the loggers' ``version`` argument, set in the config before they are built, not their
``_version`` (:func:`cbsa_dense.cli.eval_runs.set_eval_logger_versions`).
Private names of other libraries that stay, with the reason:

* ``lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters``
  (:func:`cbsa_dense.tasks.base.under_cli`): a task stores its encoder and head configs as
  hyper-parameters only when LightningCLI instantiates it (the config dicts); built outside it, they are
  modules, which a checkpoint cannot hold and which ``save_hyperparameters`` would deep-copy. That context
  variable is the only signal of which case applies before ``save_hyperparameters`` runs.
* a LightningModule's ``_trainer`` (tasks): the public ``trainer`` property raises when the module is not
  attached to a trainer (a task loaded by :func:`cbsa_dense.load`, a unit test).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cbsa_dense.cli.config_files import config_mapping, config_values
from cbsa_dense.models.checkpoint import (
    FILE_ARGS,
    LIGHTNING_CKPT_ALIASES,
    check_task_class,
    read_checkpoint,
    stored_data_eval,
    stored_num_classes,
    task_config,
)

__all__ = ["StoredRun", "ServedCheckpointIO", "prepare_args", "apply_eval_settings", "drop_weight_files"]

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


def prepare_args(argv: list[str]) -> tuple[list[str], StoredRun | None]:
    """Read a ``fit``/``validate``/``test``/``predict`` command's ``--ckpt_path`` file once and replay its task
    config as defaults: returns the arguments to parse (``--model <stored config>`` right after the
    subcommand, ``--ckpt_path`` taken out) and the read run. Other commands, Lightning's aliases (``last``,
    ``best`` ...) and remote paths come back unchanged, with ``None``."""
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
    config = stored.task_config()
    replay = ["--model", json.dumps(config)] if config is not None else []
    return [argv[0], *replay, *rest], stored


def _has(mapping: object, keys: list[str]) -> bool:
    """Whether the nested ``mapping`` holds the dotted path ``keys`` (``init_args`` levels may be left out)."""
    if not keys:
        return True
    if not isinstance(mapping, dict):
        return False
    return ((keys[0] in mapping and _has(mapping[keys[0]], keys[1:]))
            or ("init_args" in mapping and keys[0] != "init_args" and _has(mapping["init_args"], keys)))


def _given(argv: list[str], section: str, key: str) -> bool:
    """Whether the command line or a ``--config`` of ``argv`` sets ``section``'s ``key`` (dotted for nested
    keys: ``head.init_args.detections_per_img``), with or without the ``init_args`` level."""
    flags = (f"--{section}.init_args.{key}", f"--{section}.{key}")
    if any(arg in flags or arg.startswith(tuple(f + "=" for f in flags)) for arg in argv):
        return True
    return any(_has(config_mapping(value).get(section), key.split(".")) for value in config_values(argv))


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


def apply_eval_settings(config, stored: StoredRun, argv: list[str]) -> dict[str, str]:
    """The evaluation protocol of a parsed ``validate``/``test``/``predict`` config, from the checkpoint where
    the command line and configs (``argv``) leave it unset; prints it with the source of each part.

    Task settings (segmentation ``inference``, detection ``max_detection_thresholds`` and the head's
    ``detections_per_img``) are stored task arguments, already replayed as defaults; the data settings
    (``eval_scale``; detection ``image_size``, ``eval_mode`` (resize, native or tiled) and ``tile_overlap``)
    are set here from what the checkpoint records.

    Returns:
        ``{part: source}``, source ``"checkpoint"`` or ``"config/command line"``.
    """
    from jsonargparse import Namespace

    from cbsa_dense.tasks.sliding_window import SlidingWindowInference

    model_args = getattr(config.get("model"), "init_args", None)
    data = config.get("data")
    data_args = getattr(data, "init_args", None)
    recorded = stored_data_eval(stored.checkpoint)
    sources: dict[str, str] = {}
    parts = []

    def source(section: str, key: str) -> str:
        sources[key] = "config/command line" if _given(argv, section, key) else "checkpoint"
        return sources[key]

    if model_args is not None and "inference" in model_args:
        spec = model_args.get("inference")
        if isinstance(spec, dict):
            spec = Namespace(class_path=spec["class_path"], init_args=Namespace(**spec.get("init_args", {})))
            model_args["inference"] = spec
        inference = SlidingWindowInference(**dict(vars(spec.init_args))) if spec is not None else SlidingWindowInference()
        parts.append(f"inference {inference.describe()} (from the {source('model', 'inference')})")
    detection = model_args is not None and "max_detection_thresholds" in model_args
    if detection:
        value = model_args.get("max_detection_thresholds") or [1, 10, 100]
        parts.append(f"max_detection_thresholds {list(value)} (from the {source('model', 'max_detection_thresholds')})")
        head_args = getattr(model_args.get("head"), "init_args", None)
        for key in ("detections_per_img", "box_detections_per_img"):
            if head_args is not None and key in head_args:
                origin = "config/command line" if _given(argv, "model", f"head.init_args.{key}") else "checkpoint"
                parts.append(f"{key} {head_args[key]} (from the {origin})")
    for key in ("eval_scale", "image_size", "eval_mode", "tile_overlap", "native_scale") if data_args is not None else ():
        if key not in data_args or (key != "eval_scale" and not detection):
            continue
        origin = source("data", key)
        if origin == "checkpoint" and key in recorded:
            value = recorded[key]
            data_args[key] = tuple(value) if isinstance(value, list) else value
        elif origin == "checkpoint":
            origin = sources[key] = "data's default; the checkpoint records none"
        value = data_args[key]
        shown = list(value) if isinstance(value, tuple) else value
        rule = (", longest side resized, zero-padded square" if key == "image_size"
                and data_args.get("eval_mode", "resize") == "resize" else "")
        if (key == "tile_overlap" and data_args.get("eval_mode") != "tiled") or (
                key == "native_scale" and data_args.get("eval_mode", "resize") == "resize"):
            continue
        parts.append(f"{key} {shown}{rule} (from the {origin})")
    if parts and rank_zero_only.rank == 0:
        print(f"evaluation protocol of {stored.path}: " + "; ".join(parts), file=sys.stderr)
    return sources
