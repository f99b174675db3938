"""The training subcommands (``fit``, ``validate``, ``test``, ``predict``): :class:`CBSADenseCLI`, a
``LightningCLI`` in subclass mode with the project's checks, links and defaults.

Imported by :mod:`cbsa_dense.cli` only for those subcommands, so that ``cbsa-dense configs``, ``score``
and the other plain commands start without importing Lightning.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from cbsa_dense.callbacks.log_progress import LogProgress
from cbsa_dense.callbacks.preemption import PreemptionCheckpoint
from cbsa_dense.cli.checks import check_writable
from cbsa_dense.cli.config_blame import config_error_context
from cbsa_dense.cli.config_files import compose_config_args
from cbsa_dense.cli.entry import quick_help_kwargs
from cbsa_dense.cli.eval_runs import discard_failed_evaluation
from cbsa_dense.cli.null_patch import read_nested_null_as_yaml
from cbsa_dense.cli.stored_run import (
    ServedCheckpointIO,
    StoredRun,
    drop_weight_files,
    prepare_args,
)
from cbsa_dense.config_errors import condense_parse_error
from cbsa_dense.errors import ConfigError, OutputError

#: ``CBSADenseCLI(stored_run=...)`` left out: the arguments are not composed and no checkpoint is read yet.
NOT_PREPARED = object()


class CBSADenseCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode, config saving with overwrite).

    Before any work starts it checks that the run's output locations can be written, and that
    ``predict`` would not overwrite earlier predictions (``overwrite=True``, the ``--overwrite`` flag,
    allows it). Every ``fit`` gets a :class:`~cbsa_dense.callbacks.PreemptionCheckpoint`. When stdout is not a
    terminal (``> train.log``, a cluster scheduler), the progress bar is :class:`~cbsa_dense.callbacks.LogProgress`:
    a plain line every ``log_every_n_steps`` steps instead of a Rich/tqdm bar that writes nothing useful to a file.
    """

    def __init__(self, *args, overwrite: bool = False, stored_run: StoredRun | None | object = NOT_PREPARED,
                 **kwargs) -> None:
        """``args`` (a list) may name shipped configs and configs with ``_base_`` files, and hold a ``--ckpt_path``:
        they are composed (:func:`~cbsa_dense.cli.config_files.compose_config_args`) and the checkpoint is read
        (:func:`~cbsa_dense.cli.stored_run.prepare_args`) here, once. A caller that did both already (the entry
        point: it composes to name config files in errors and to hand DDP ranks the composed command) passes
        what ``prepare_args`` returned, ``stored_run`` included (None: no checkpoint); the arguments are then
        used as given, neither composed nor read again."""
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # Seed 0 unless a config or --seed_everything says otherwise, as the shipped configs do; Lightning's own
        # default draws a random seed and warns "No seed found" (predict --images has no config to give one).
        kwargs.setdefault("seed_everything_default", 0)
        # The optimizer and scheduler are task arguments (--model.init_args.optimizer): the task builds the
        # parameter groups (no decay on norms/biases/step sizes, layer decay) and hands them to it. The
        # top-level --optimizer/--lr_scheduler of LightningCLI would bypass them, so they are not offered.
        kwargs.setdefault("auto_configure_optimizers", False)
        # Parse errors come back to parse_arguments (main parser and each subcommand's), to be told in one line.
        parser_kwargs = dict(kwargs.get("parser_kwargs") or {})
        parser_kwargs.setdefault("exit_on_error", False)
        for key, value in quick_help_kwargs().items():          # the subcommands' help keeps its quick block
            parser_kwargs.setdefault(key, value)
        for subcommand in ("fit", "validate", "test", "predict"):
            # `<subcommand> --help`: a one-line usage and the few options a user sets first, then Lightning's list
            parser_kwargs[subcommand] = {"exit_on_error": False, **quick_help_kwargs(subcommand),
                                         **(parser_kwargs.get(subcommand) or {})}
        kwargs["parser_kwargs"] = parser_kwargs
        if stored_run is NOT_PREPARED:
            stored_run = None
            if isinstance(kwargs.get("args"), (list, tuple)):   # shipped names and _base_ files, as the entry point
                kwargs["args"] = compose_config_args([str(a) for a in kwargs["args"]])
                kwargs["args"], stored_run = prepare_args(kwargs["args"])   # --ckpt_path read once, replayed
        elif isinstance(kwargs.get("args"), tuple):
            kwargs["args"] = list(kwargs["args"])
        self.overwrite = overwrite
        self._stored = stored_run                   # the --ckpt_path checkpoint (cbsa_dense.cli.stored_run)
        self._argv = list(kwargs["args"]) if isinstance(kwargs.get("args"), list) else list(sys.argv[1:])
        self._ckpt_num_classes: int | None = None
        self._configured_num_classes: int | None = None
        self._data_class_name = "?"
        self._callbacks_as_given: tuple[Namespace, object] | None = None       # see _add_log_progress
        register_short_names()
        read_nested_null_as_yaml()
        super().__init__(LightningModule, LightningDataModule, *args, subclass_mode_model=True,
                         subclass_mode_data=True, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        """``num_classes`` is given once, by the data: the datamodule's ``num_classes`` (its class names, its
        json's categories) is linked into the task, which builds its head with it."""
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", compute_fn=self._data_num_classes,
                              apply_on="instantiate")
        # The evaluation protocol lives in the task (stored and replayed with it); the datamodule receives it to
        # build its evaluation transform (cbsa_dense.tasks.eval_protocol).
        parser.link_arguments("model.init_args.evaluation", "data.init_args.evaluation", apply_on="parse")

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

    def parse_arguments(self, parser, args) -> None:
        """Parse, then check that the ``--ckpt_path`` checkpoint (read and checked already: a bad file fails
        there, one line) holds the task the config builds. A ``fit``'s ``--model.init_args.weights`` file is
        checked the same way (before any data setup)."""
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
            from cbsa_dense.tasks.eval_protocol import moved_setting_hint

            raise ConfigError(condense_parse_error(str(error)) + moved_setting_hint(str(error))) from error
        subcommand = self.config.get("subcommand")
        if subcommand and self.config.get(subcommand) is not None:
            from cbsa_dense.tasks.checkpoint_format import check_weights_path

            model = self.config[subcommand].get("model")
            if self._stored is not None:
                self._stored.check_task(getattr(model, "class_path", None), subcommand)
            init_args = getattr(model, "init_args", None)
            resuming = self._stored is not None or self.config[subcommand].get("ckpt_path")
            if subcommand == "fit" and not resuming and init_args is not None:
                check_weights_path(init_args.get("weights"), model.class_path, init_args.get("weights_strict", True))

    def before_instantiate_classes(self) -> None:
        """``validate``/``test``/``predict``: the loggers write into an evaluation folder
        (:func:`~cbsa_dense.cli.eval_runs.set_eval_logger_versions`). With a ``--ckpt_path`` checkpoint: the path goes back into the config (for Lightning's restore, see
        :mod:`cbsa_dense.cli.stored_run`), the model's pretrained/weights files are not read (the checkpoint holds
        the weights). The task and the data must be of the same kind (segmentation, detection)."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        self._add_log_progress(config.get("trainer"))
        model_args = getattr(config.get("model"), "init_args", None)
        self._configured_num_classes = model_args.get("num_classes") if model_args is not None else None
        self._data_class_name = str(getattr(config.get("data"), "class_path", "?")).rpartition(".")[2]
        check_task_and_data(config, self._stored.path if self._stored is not None else None)
        if subcommand in ("validate", "test", "predict"):
            from cbsa_dense.cli.eval_runs import set_eval_logger_versions

            set_eval_logger_versions(config["trainer"], subcommand,
                                     self._stored.path if self._stored is not None else config.get("ckpt_path"))
        if self._stored is None:
            return
        config["ckpt_path"] = self._stored.path
        self._ckpt_num_classes = self._stored.num_classes
        drop_weight_files(config)

    def _serve_checkpoint(self) -> None:
        """Lightning's restore takes the checkpoint read already instead of reading the file again."""
        if self._stored is not None:
            strategy = self.trainer.strategy
            strategy.checkpoint_io = ServedCheckpointIO(strategy.checkpoint_io, self._stored)

    def _add_log_progress(self, trainer_config: Namespace | None) -> None:
        """:class:`~cbsa_dense.callbacks.LogProgress` joins the parsed trainer's callbacks when stdout is not a
        terminal, the progress bar is on (``enable_progress_bar`` not false) and neither the config nor
        ``trainer_defaults`` names a progress bar of its own (``--trainer.callbacks+ RichProgressBar`` keeps
        Rich's in a file too). It depends on where this process's stdout goes, not on the run, so
        :meth:`instantiate_classes` takes it out of the config again once the trainer is built: the saved
        ``config.yaml`` is the config as given."""
        if trainer_config is None:
            return
        if not _wants_log_progress(trainer_config, sys.stdout, self.trainer_defaults.get("callbacks")):
            return
        given = trainer_config.get("callbacks")
        self._callbacks_as_given = (trainer_config, given)
        listed = [] if given is None else list(given) if isinstance(given, list) else [given]
        trainer_config["callbacks"] = [*listed, Namespace(class_path=LOG_PROGRESS, init_args=Namespace())]

    def instantiate_classes(self) -> None:
        """Lightning's, then the trainer config's callbacks back as given (see :meth:`_add_log_progress`)."""
        try:
            super().instantiate_classes()
        finally:
            if self._callbacks_as_given is not None:
                trainer_config, given = self._callbacks_as_given
                trainer_config["callbacks"] = given
                self._callbacks_as_given = None

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
        self._serve_checkpoint()
        self.trainer.callbacks.append(PreemptionCheckpoint())

    def _prepare_evaluation(self) -> None:
        """validate/test/predict: their own output folder (:mod:`cbsa_dense.cli.eval_runs`), then writability."""
        from cbsa_dense.cli.eval_runs import prepare_eval_run

        prepare_eval_run(self.trainer, self.subcommand, self.config[self.subcommand].get("ckpt_path"),
                         self._stored.checkpoint if self._stored is not None else None, model=self.model)
        evaluation = getattr(self.model, "evaluation", None)
        if evaluation is not None and self.trainer.is_global_zero:
            origin = f" (stored in {self._stored.path} unless set by a config or the command line)" if self._stored else ""
            print(f"evaluation protocol{origin}: {evaluation.describe()}", file=sys.stderr)
        self._check_outputs()
        self._serve_checkpoint()

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


#: The class path :meth:`CBSADenseCLI._add_log_progress` puts into the parsed trainer config.
LOG_PROGRESS = f"{LogProgress.__module__}.{LogProgress.__qualname__}"


def _class_at(spec) -> type | None:
    class_path = getattr(spec, "class_path", None)
    module, _, name = str(class_path).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def check_task_and_data(config, ckpt_path: str | None = None) -> None:
    """ConfigError naming both when the task and the datamodule are of different kinds (a detection task on
    segmentation data, or the reverse): each declares the protocol it evaluates with (``evaluation_type``)."""
    task, data = _class_at(config.get("model")), _class_at(config.get("data"))
    task_kind, data_kind = getattr(task, "evaluation_type", None), getattr(data, "evaluation_type", None)
    if task_kind is None or data_kind is None or task_kind is data_kind:
        return

    def kind(protocol: type) -> str:
        return "segmentation" if protocol.__name__.startswith("Seg") else "detection"

    source = f"the checkpoint {ckpt_path} holds" if ckpt_path else "the config builds"
    raise ConfigError(f"{source} a {task.__name__} ({kind(task_kind)}), but the data is a {data.__name__} "
                      f"({kind(data_kind)} data): give {kind(task_kind)} data (--data ...), or a "
                      f"{kind(data_kind)} {'checkpoint' if ckpt_path else 'task'}")


def _wants_log_progress(trainer_config, stdout, defaults=None) -> bool:
    """Whether the trainer gets :class:`~cbsa_dense.callbacks.LogProgress`: ``stdout`` is not a terminal, the
    progress bar is not turned off, and no progress bar is configured already. ``trainer_config``: the parsed
    trainer section (callbacks as ``class_path`` namespaces, or built callbacks); ``defaults``: the CLI's
    ``trainer_defaults`` callbacks."""
    listed = []
    for callbacks in (trainer_config.get("callbacks"), defaults):
        listed += [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
    terminal = bool(getattr(stdout, "isatty", lambda: False)())
    return (not terminal and trainer_config.get("enable_progress_bar") is not False
            and not any(_is_progress_bar(c) for c in listed))


def _is_progress_bar(callback) -> bool:
    """``callback`` (built, or a parsed ``class_path`` namespace or dict) is a Lightning progress bar."""
    if isinstance(callback, ProgressBar):
        return True
    class_path = callback.get("class_path") if isinstance(callback, dict | Namespace) else None
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


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
    from cbsa_dense.lazy import import_all

    for package in ("cbsa_dense.tasks", "cbsa_dense.data", "cbsa_dense.models", "cbsa_dense.layers",
                    "cbsa_dense.callbacks"):
        import_all(package)


def run(argv: list[str], from_console: bool, overwrite: bool = False, composed: bool = False) -> int:
    """Run a training subcommand (``argv[0]`` in fit/validate/test/predict). ``composed``: the caller (the entry
    point) ran :func:`~cbsa_dense.cli.config_files.compose_config_args` on ``argv`` already."""
    # Every --config: a file or a shipped name, a YAML mapping, its _base_ files too (one-line errors naming the
    # file); shipped names -> files, _base_ -> composed YAML text, --trainer presets -> their trainer section.
    if not composed:
        argv = compose_config_args(argv)
    if from_console:                      # DDP ranks re-run the command as given (each reads its --ckpt_path)
        sys.argv[1:] = argv
    parsed, stored = prepare_args(argv)   # --ckpt_path read once; its task config replayed as defaults
    evaluating = bool(argv) and argv[0] in ("validate", "test", "predict")
    with config_error_context(parsed), warnings.catch_warnings(), \
            (discard_failed_evaluation() if evaluating else contextlib.nullcontext()):   # no stub folder on failure
        # the parsed arguments differ from sys.argv (the replay), which LightningCLI warns about
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        CBSADenseCLI(args=parsed, overwrite=overwrite, stored_run=stored)
    return 0
