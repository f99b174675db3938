"""The training subcommands (``fit``, ``validate``, ``test``, ``predict``): :class:`CBSADenseCLI`, a
``LightningCLI`` in subclass mode with the project's checks, links and defaults.

Imported by :mod:`cbsa_dense.cli` only for those subcommands, so that ``cbsa-dense configs``, ``score``
and the other plain commands start without importing Lightning.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from cbsa_dense.callbacks.preemption import PreemptionCheckpoint
from cbsa_dense.cli_checks import apply_eval_protocol, check_writable, condense_parse_error, drop_weight_files
from cbsa_dense.config_files import compose_config_args, config_error_context, config_mapping, config_values
from cbsa_dense.errors import ConfigError, OutputError


class CBSADenseCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode, config saving with overwrite).

    Before any work starts it checks that the run's output locations can be written, and that
    ``predict`` would not overwrite earlier predictions (``overwrite=True``, the ``--overwrite`` flag,
    allows it). Every ``fit`` gets a :class:`~cbsa_dense.callbacks.PreemptionCheckpoint`.
    """

    def __init__(self, *args, overwrite: bool = False, model_from_checkpoint: bool = False, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # The optimizer and scheduler are task arguments (--model.init_args.optimizer): the task builds the
        # parameter groups (no decay on norms/biases/step sizes, layer decay) and hands them to it. The
        # top-level --optimizer/--lr_scheduler of LightningCLI would bypass them, so they are not offered.
        kwargs.setdefault("auto_configure_optimizers", False)
        if isinstance(kwargs.get("args"), (list, tuple)):       # shipped names and _base_ files, as the entry point
            kwargs["args"] = compose_config_args([str(a) for a in kwargs["args"]])
        self.overwrite = overwrite
        self._model_from_checkpoint = model_from_checkpoint    # --model is the checkpoint's task config already
        self._ckpt_num_classes: int | None = None
        self._checkpoint: dict | None = None        # --ckpt_path, read once (tensors memory-mapped)
        self._configured_num_classes: int | None = None
        self._data_class_name = "?"
        register_short_names()
        super().__init__(LightningModule, LightningDataModule, *args, subclass_mode_model=True,
                         subclass_mode_data=True, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        """``num_classes`` is given once, by the data: the datamodule's ``num_classes`` (its class names, its
        json's categories) is linked into the task, which builds its head with it."""
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", compute_fn=self._data_num_classes,
                              apply_on="instantiate")

    def _data_num_classes(self, value: int | None) -> int:
        """The datamodule's ``num_classes`` (a datamodule without that attribute links nothing)."""
        data = self._data_class_name
        configured = self._configured_num_classes
        if configured is not None and value and int(configured) != int(value):
            raise ConfigError(f"the config sets model num_classes={configured} but the data ({data}) has {value} "
                              "classes: num_classes is set by the data (its class names, its json's categories); "
                              "remove num_classes from the model config")
        if not value and self._ckpt_num_classes:
            return self._ckpt_num_classes        # e.g. predicting on an images-only COCO json: the checkpoint's
        if not value:
            raise ConfigError(f"the datamodule {data} declares no classes (num_classes={value!r}): give its class "
                              "names / annotation files; the task takes its num_classes from the data")
        return int(value)

    def _parse_ckpt_path(self) -> None:
        """Lightning replays the task config stored in ``--ckpt_path`` over the parsed config; this does
        the same with the stored config in this release's layout and without the arguments linked from the
        data (``num_classes``), which the data sets again (:func:`~cbsa_dense.models.checkpoint.task_config`).
        The checkpoint was read (and checked) once, in :meth:`parse_arguments`."""
        from cbsa_dense.models.checkpoint import stored_num_classes, task_config

        if self._checkpoint is None:
            return
        self._ckpt_num_classes = stored_num_classes(self._checkpoint)
        if self._model_from_checkpoint:
            return              # given as --model before the other arguments, which override parts of it
        stored = task_config(self._checkpoint)
        if stored is None:
            super()._parse_ckpt_path()             # not a task of this project's CLI: Lightning's own replay
            return
        self.config = self.parser.parse_object({self.config.subcommand: {"model": stored}}, self.config)

    def parse_arguments(self, parser, args) -> None:
        """Parse, then check ``--ckpt_path`` before Lightning reads it: right after parsing, Lightning loads
        it with a bare ``torch.load`` and replaces the configured model with the checkpoint's task. A bad
        file (missing, a directory, truncated, foreign) or another task's checkpoint fails here, one line.
        A ``fit``'s ``--model.init_args.weights`` file is checked the same way (before any data setup)."""
        for each in (parser, *getattr(self, "_subcommand_parsers", {}).values()):
            each.exit_on_error = False            # parse errors come back here, to be told in one line
        for arg in args if args is not None else sys.argv[1:]:
            if isinstance(arg, str) and arg.split("=")[0] in ("--model.init_args.num_classes", "--model.num_classes"):
                raise ConfigError(f"{arg.split('=')[0]}: num_classes is set by the data (its class names, its json's "
                                  "categories) and the heads are built for it; change the data's classes instead")
            if isinstance(arg, str) and arg.split("=")[0].split(".")[0] in ("--optimizer", "--lr_scheduler"):
                raise ConfigError(_routed_option_message(arg.split("=")[0]))
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            routed = re.search(r"does not accept option '((optimizer|lr_scheduler)[.'a-z_]*)", str(error))
            if routed:                                   # a top-level optimizer: / lr_scheduler: in a config file
                raise ConfigError(_routed_option_message(routed.group(2), in_config=True)) from error
            raise ConfigError(condense_parse_error(str(error))) from error
        subcommand = self.config.get("subcommand")
        if subcommand and self.config.get(subcommand) is not None:
            from cbsa_dense.models.checkpoint import check_ckpt_path, check_weights_path

            model = self.config[subcommand].get("model")
            self._checkpoint = check_ckpt_path(self.config[subcommand].get("ckpt_path"),
                                               getattr(model, "class_path", None), subcommand)
            init_args = getattr(model, "init_args", None)
            if subcommand == "fit" and not self.config[subcommand].get("ckpt_path") and init_args is not None:
                check_weights_path(init_args.get("weights"), model.class_path, init_args.get("weights_strict", True))

    def before_instantiate_classes(self) -> None:
        """``validate``/``test``/``predict --ckpt_path``: evaluate with the protocol the model was trained
        and validated with (``checkpoint["eval_protocol"]``) for every part the command line and config
        leave unset, and say which protocol is used and where each part came from."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        model_args = getattr(config.get("model"), "init_args", None)
        self._configured_num_classes = model_args.get("num_classes") if model_args is not None else None
        self._data_class_name = str(getattr(config.get("data"), "class_path", "?")).rpartition(".")[2]
        if self._checkpoint is None:
            return
        drop_weight_files(config)       # the checkpoint holds the weights: pretrained/weights files are not read
        if subcommand in ("validate", "test", "predict"):
            from cbsa_dense.models.checkpoint import task_config

            apply_eval_protocol(config, self._checkpoint.get("eval_protocol") or {}, config.get("ckpt_path"),
                                task_config(self._checkpoint))

    def _check_outputs(self) -> None:
        check_writable(self.trainer.default_root_dir, "--trainer.default_root_dir")
        for logger in self.trainer.loggers:
            save_dir = getattr(logger, "save_dir", None)
            if save_dir:
                check_writable(save_dir, f"the {type(logger).__name__}'s save_dir")
        for callback in self.trainer.checkpoint_callbacks:
            if getattr(callback, "dirpath", None):
                check_writable(callback.dirpath, "the ModelCheckpoint dirpath")

    def before_fit(self) -> None:
        self._check_outputs()
        self.trainer.callbacks.append(PreemptionCheckpoint())

    def _prepare_evaluation(self) -> None:
        """validate/test/predict: their own output folder (:mod:`cbsa_dense.eval_runs`), then writability."""
        from cbsa_dense.eval_runs import prepare_eval_run

        prepare_eval_run(self.trainer, self.subcommand, self.config[self.subcommand].get("ckpt_path"),
                         self._checkpoint)
        self._check_outputs()

    def before_validate(self) -> None:
        self._prepare_evaluation()

    def before_test(self) -> None:
        self._prepare_evaluation()

    def before_predict(self) -> None:
        self._prepare_evaluation()
        outputs = getattr(self.model, "prediction_outputs", lambda: [])()
        for path in map(Path, outputs):
            existing = list(path.iterdir()) if path.is_dir() else [path] if path.exists() else []
            if existing and not self.overwrite:
                raise OutputError(f"{path} already holds predictions ({len(existing)} entries); pass --overwrite "
                                  "to replace them, or write to another folder")
            check_writable(path if path.is_dir() or not path.suffix else path.parent, "the prediction output")


def _routed_option_message(flag: str, in_config: bool = False) -> str:
    """The one-line answer to LightningCLI's top-level ``--optimizer`` / ``--lr_scheduler`` (turned off here)."""
    option = flag.lstrip("-").split(".")[0]
    example = "torch.optim.AdamW" if option == "optimizer" else "WarmupPolyLR"
    where = (f"--{option}: a top-level '{option}:' section is not accepted: move it under model: init_args:"
             if in_config else f"{flag}: use --model.init_args.{option} (e.g. --model.init_args.{option} {example})")
    return (f"{where}; the {option} is an argument of the task, so that its parameter groups (no weight decay "
            f"on norms, biases and step sizes; layer decay) apply")


def register_short_names() -> None:
    """Import every module that defines a configurable class, so that configs and the command line may name
    the project's tasks, datamodules, encoders, heads, necks, layers and callbacks by class name alone
    (``--model SegmentationTask``, ``class_path: CBTDecoder``): jsonargparse resolves a short name among the
    imported subclasses of the expected type."""
    for module in ("cbsa_dense.tasks", "cbsa_dense.data", "cbsa_dense.models", "cbsa_dense.layers",
                   "cbsa_dense.callbacks", "cbsa_dense.tasks.schedulers", "cbsa_dense.tasks.sliding_window"):
        importlib.import_module(module)


def _model_from_checkpoint(argv: list[str]) -> list[str]:
    """Evaluate a checkpoint without repeating the training config.

    For ``validate``/``test``/``predict`` with ``--ckpt_path`` and no ``--model`` (nor a ``--config``
    that sets one), add ``--model`` with the task config stored in the checkpoint (LightningCLI saves
    it as hyper-parameters). Only the data config is still needed; ``--model.init_args.*`` arguments
    still override parts of it (e.g. the evaluation ``inference``).
    """
    if not argv or argv[0] not in ("validate", "test", "predict"):
        return argv
    if any(a == "--model" or a.startswith(("--model=", "--model.class_path")) for a in argv):
        return argv                     # a model is given; ``--model.init_args.*`` alone only overrides parts
    values = dict(zip(argv, argv[1:]))
    values.update(a.split("=", 1) for a in argv if a.startswith("--ckpt_path="))
    ckpt = values.get("--ckpt_path")
    if any("model" in config_mapping(config) for config in config_values(argv)):
        return argv                     # a config (a file, a shipped name, composed from _base_ files) sets one
    from cbsa_dense.models.checkpoint import LIGHTNING_CKPT_ALIASES, read_checkpoint, task_config

    if not ckpt or ckpt.split(":")[0] in LIGHTNING_CKPT_ALIASES or "://" in ckpt:
        return argv
    stored = task_config(read_checkpoint(ckpt, mmap=True))
    if stored is None:
        return argv
    return [argv[0], "--model", json.dumps(stored), *argv[1:]]


def run(argv: list[str], from_console: bool, overwrite: bool = False,
        extra_help: Callable[[], None] = lambda: None) -> int:
    """Run a training subcommand (``argv[0]`` in fit/validate/test/predict, or ``--help``)."""
    # Every --config: a file or a shipped name, a YAML mapping, its _base_ files too (one-line errors naming the
    # file); shipped names -> files, _base_ -> composed YAML text, --trainer presets -> their trainer section.
    argv = compose_config_args(argv)
    given = argv
    argv = _model_from_checkpoint(argv)
    if from_console:                      # LightningCLI warns when both sys.argv and args are given
        sys.argv[1:] = argv
    args = None if from_console else argv
    if argv and argv[0] in ("-h", "--help"):
        try:
            CBSADenseCLI(args=args)
        except SystemExit:
            extra_help()
            raise
    with config_error_context(argv):      # a parse error names the config (or _base_) file that set the key
        CBSADenseCLI(args=args, overwrite=overwrite, model_from_checkpoint=argv is not given)
    return 0
