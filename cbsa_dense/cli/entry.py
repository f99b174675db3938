"""The ``cbsa-dense`` entry point: :func:`main` (exported as :func:`cbsa_dense.cli.main`).

Training subcommands (``fit``, ``validate``, ``test``, ``predict``) are Lightning's, through
:class:`~cbsa_dense.cli.lightning_cli.CBSADenseCLI` (a ``LightningCLI`` in subclass mode: ``--model`` and
``--data`` take any ``LightningModule`` / ``LightningDataModule`` by ``class_path`` or class name). The other
subcommands are plain commands in :mod:`cbsa_dense.cli.commands`, each a module with a ``main(argv) -> int``
function, imported only when used; Lightning itself is imported only for the training subcommands, so
``cbsa-dense configs`` or ``cbsa-dense score ...`` start fast.

The top-level ``--help`` and ``--version`` are written here, from :data:`TRAINING_COMMANDS` and
:data:`EXTRA_COMMANDS`, without importing Lightning (a subcommand's ``--help`` is its own parser's). Before a
training subcommand imports Lightning, its ``--config`` files are composed (a missing file is told in one line)
and a ``--ckpt_path`` that does not exist is reported.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence

from cbsa_dense.errors import CheckpointError, ConfigError, UserError, user_message

#: Training subcommands (Lightning's, through LightningCLI): name -> one-line help.
TRAINING_COMMANDS: dict[str, str] = {
    "fit": "train a model from a config (`cbsa-dense fit --config demo_seg.yaml`), or resume with --ckpt_path",
    "validate": "evaluate a checkpoint on the validation split (--ckpt_path, with its evaluation protocol)",
    "test": "evaluate a checkpoint on the test split: metrics, per-class table and json",
    "predict": "predict with a checkpoint: label maps and overlays (`--ckpt_path m.ckpt --images photos/`)",
}

#: Extra subcommands: name -> (module with ``main(argv)``, one-line help).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("cbsa_dense.cli.commands.score", "score predictions against ground truth (seg | coco)"),
    "info": ("cbsa_dense.cli.commands.info", "parameter counts and GFLOPs of a config's model"),
    "benchmark": ("cbsa_dense.cli.commands.benchmark", "benchmarks: speed (attention | encoder | train), real-photo accuracy (real)"),
    "export": ("cbsa_dense.cli.commands.export", "export a checkpoint to ONNX or TorchScript"),
    "explain": ("cbsa_dense.cli.commands.explain", "visualize CBSA extraction maps of a checkpoint"),
    "configs": ("cbsa_dense.cli.commands.configs", "list the shipped configs, or copy one out for editing"),
    "linearize": ("cbsa_dense.cli.commands.linearize", "match a CBSA encoder to its pretrained softmax attention"),
}

_HELP_OPTIONS = ("-h", "--help")
_VERSION_OPTIONS = ("-V", "--version")


def _version() -> str:
    from cbsa_dense import __version__

    return __version__


def help_text() -> str:
    """The top-level ``cbsa-dense --help``: the project, every subcommand with its one-line description."""
    def rows(items) -> list[str]:
        return [f"  {name:<10} {help_}" for name, help_ in items]

    return "\n".join([
        f"cbsa-dense {_version()}: Contract-and-Broadcast Self-Attention (CBSA) models for dense vision",
        "(semantic segmentation, object detection), linear in the number of tokens; trained with Lightning.",
        "",
        "usage: cbsa-dense <subcommand> [options]",
        "       cbsa-dense <subcommand> --help     the options of a subcommand",
        "",
        "Training and evaluation (options from --config files and --section.option flags):",
        *rows(TRAINING_COMMANDS.items()),
        "",
        "Other subcommands:",
        *rows((name, help_) for name, (_, help_) in EXTRA_COMMANDS.items()),
        "",
        "Options:",
        "  -h, --help     show this help and exit",
        "  -V, --version  show the version (and those of Python, torch, Lightning) and exit",
        f"  --traceback    show the traceback of a reported error (or set {TRACEBACK_ENV}=1)",
        "",
        "Start: `cbsa-dense configs` lists the shipped configs; `cbsa-dense fit --config demo_seg.yaml` trains the",
        "demo on generated data (CPU); `cbsa-dense fit --help` starts with the options a user sets.",
    ])


def version_text() -> str:
    """``cbsa-dense --version``: this package's version, then those of the libraries it runs on (read from
    the installed distributions' metadata: nothing is imported)."""
    import platform
    from importlib import metadata
    from pathlib import Path

    found = []
    for dist in ("torch", "lightning", "jsonargparse", "timm"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    where = Path(__file__).resolve().parents[1]
    return (f"cbsa-dense {_version()}\n"
            f"Python {platform.python_version()}, {', '.join(found)}; cbsa_dense in {where}")


#: The first lines of ``cbsa-dense <subcommand> --help``: the options a user sets (LightningCLI's full list,
#: hundreds of Trainer flags, follows).
QUICK_HELP: dict[str, str] = {
    "fit": """\
Train a model. The options you usually set (the full list, with defaults, follows below):

  --config CONFIG        a shipped config name or a YAML file (`cbsa-dense configs` lists them); repeat it to
                         layer configs: --config finetune_cpu.yaml --config trainer/ddp.yaml
  --data.init_args.root DIR
                         your data folder (SegFolderDataModule: images/, masks/, classes.txt)
  --model.init_args.encoder.init_args.pretrained FILE_OR_NAME
                         encoder weights: a .safetensors/.pth file or a timm name (vit_small_patch14_dinov2.lvd142m)
  --model.init_args.weights FILE
                         weights of the whole task to start from (a cbsa-dense checkpoint, a state dict)
  --trainer.max_steps N  training steps (or --trainer.max_epochs N)
  --trainer.devices N    devices (GPUs: --trainer.accelerator gpu); all GPUs with DDP: --config trainer/ddp.yaml
  --trainer.logger.init_args.save_dir DIR
                         output folder: runs go to DIR/<name>/version_N (the shipped configs: runs/);
                         without a logger: --trainer.default_root_dir DIR
  --model.init_args.evaluation.FIELD VALUE
                         the evaluation protocol: segmentation scale, window, stride, scales, flip; detection
                         mode, image_size, tile_overlap (e.g. --model.init_args.evaluation.scale [896,504])
  --ckpt_path FILE       resume a run from its checkpoint (runs/<name>/version_N/checkpoints/last.ckpt)

Then: cbsa-dense test --ckpt_path CKPT --config CONFIG, and cbsa-dense predict --ckpt_path m.ckpt --images photos/
--print_config prints the composed config; --model.help SegmentationTask (or DetectionTask) lists a task's options.""",
    "validate": """\
Evaluate a checkpoint on the validation split. The options you usually set (the full list follows below):

  --ckpt_path FILE       the checkpoint (its task and evaluation protocol are used)
  --config CONFIG        the training config, for its data (or --data CLASS with --data.init_args.root DIR)
  --model.init_args.evaluation.FIELD VALUE
                         change the stored evaluation protocol (segmentation scale, window, stride, scales, flip;
                         detection mode, image_size, tile_overlap)
Outputs (metrics.csv, per-class json) go to an eval/ folder beside the run; the command prints it.""",
    "test": """\
Evaluate a checkpoint on the test split. The options you usually set (the full list follows below):

  --ckpt_path FILE       the checkpoint (its task and evaluation protocol are used)
  --config CONFIG        the training config, for its data (or --data CLASS with --data.init_args.root DIR)
  --model.init_args.evaluation.FIELD VALUE
                         change the stored evaluation protocol (segmentation scale, window, stride, scales, flip;
                         detection mode, image_size, tile_overlap)
  --model.init_args.results_dir DIR
                         detection: where test_results.json goes
Outputs (metrics.csv, per-class table and json) go to an eval/ folder beside the run; the command prints it.""",
    "predict": """\
Predict with a checkpoint. The options you usually set (the full list follows below):

  --ckpt_path FILE       the checkpoint (its task, classes and evaluation protocol are used)
  --images PATH          a folder, an image file or a glob ('photos/*.jpg'): cbsa-dense predict --ckpt_path m.ckpt
                         --images photos/ (or --config CONFIG for the data's predict split)
  --model.init_args.predict_dir DIR
                         segmentation: where labels/ and overlays/ go (default: an eval/ folder beside the run)
  --model.init_args.results_dir DIR
                         detection: where predictions.json and overlays/ go
  --overwrite            replace earlier predictions in that folder
The command prints the folder its outputs went to.""",
}

_QUICK_USAGE = "cbsa-dense {} [--config CONFIG] [--SECTION.OPTION VALUE ...]   (options: below)"


def quick_help_kwargs(subcommand: str | None = None) -> dict:
    """Parser arguments (argparse's public ``usage``, ``description``, ``formatter_class``) that make
    ``cbsa-dense <subcommand> --help`` start with a one-line usage and :data:`QUICK_HELP`, kept as written:
    ``usage`` and ``description`` for a subcommand's parser, ``formatter_class`` for the main parser (jsonargparse
    gives the subcommands' parsers their parent's)."""
    if subcommand is not None:
        return {"usage": _QUICK_USAGE.format(subcommand), "description": QUICK_HELP[subcommand]}
    from jsonargparse import DefaultHelpFormatter

    class QuickHelpFormatter(DefaultHelpFormatter):
        """Lightning's help formatting, except that the quick blocks keep their lines."""

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            if text in QUICK_HELP.values():
                return "\n".join(indent + line for line in text.splitlines())
            return super()._fill_text(text, width, indent)

    return {"formatter_class": QuickHelpFormatter}


#: Environment variable that, when set to a non-empty value other than ``0``, shows tracebacks of user errors.
TRACEBACK_ENV = "CBSA_DENSE_TRACEBACK"


class _DropTip(logging.Filter):
    """Drop Lightning's advertisement lines ("Tip: ... try installing litlogger / litmodels") printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()     # logging (litlogger), uploads (litmodels)


def _quiet_known_noise() -> None:
    """Filter messages that every run printed and that tell the user nothing actionable."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning suggests more DataLoader workers whenever a loader has fewer than 2 on a machine with 3 or more
    # CPUs. Here that happens only by choice: every datamodule defaults to 2 or more (capped at the CPUs), and
    # 0 or 1 are set on purpose by the demo and CPU fine-tuning configs, whose data is small or in memory, and
    # by predict --images.
    warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers")
    rank_zero_logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTip) for f in rank_zero_logger.filters):
        rank_zero_logger.addFilter(_DropTip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cbsa-dense`` console script.

    A :class:`~cbsa_dense.errors.UserError` (a problem detected in the user's input) is printed as one
    line, ``cbsa-dense <subcommand>: error: <message>``, and the exit status is 2; ``--traceback`` (any
    position) or ``CBSA_DENSE_TRACEBACK=1`` re-raises it with its traceback. Other exceptions are bugs
    and propagate unchanged.
    """
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_known_noise()
    show_traceback = "--traceback" in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    subcommand = " ".join(argv[:2] if argv[:1] == ["score"] and argv[1:2] in (["seg"], ["coco"]) else argv[:1])
    subcommand = "" if subcommand.startswith("-") else subcommand.split(" -")[0]
    subcommand = subcommand if subcommand.split(" ")[0] in (*TRAINING_COMMANDS, *EXTRA_COMMANDS) else ""
    overwrite = subcommand == "predict" and "--overwrite" in argv
    argv = [a for a in argv if a != "--traceback" and not (overwrite and a == "--overwrite")]
    try:
        return _run(argv, from_console, overwrite)
    except SystemExit as stop:
        if type(stop).__name__ == "SIGTERMException":   # Lightning's; the checkpoint path was printed already
            return 128 + signal.SIGTERM
        raise
    except BrokenPipeError:                             # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as error:
        cause = _user_error_in_chain(error)
        if cause is None or show_traceback:
            raise
        prefix = f"cbsa-dense {subcommand}".rstrip()
        print(f"{prefix}: error: {user_message(cause)}", file=sys.stderr)
        return 2


def _user_error_in_chain(error: BaseException) -> UserError | None:
    """The UserError behind ``error``: itself, or the explicit cause (``raise ... from``) of a wrapper.

    jsonargparse reports a failed constructor of a ``class_path`` as "Does not validate against any of
    the Union subtypes", raised from the constructor's exception. Only explicit causes are followed: an
    exception raised while *handling* a user error is a bug and keeps its traceback.
    """
    # Lightning's own "your settings conflict"; only a training subcommand (which imported it) can raise it.
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    misconfiguration = getattr(exceptions, "MisconfigurationException", ())

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        if misconfiguration and isinstance(error, misconfiguration):
            return ConfigError(f"{error} (Lightning)")
        seen.add(id(error))
        error = error.__cause__
    return None


def _run(argv: list[str], from_console: bool, overwrite: bool = False) -> int:
    if not argv or argv[0] in _HELP_OPTIONS:
        print(help_text())
        return 0
    if argv[0] in _VERSION_OPTIONS:
        print(version_text())
        return 0
    if argv[0] in EXTRA_COMMANDS:
        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    if not any(a in TRAINING_COMMANDS for a in argv) and any(a in _HELP_OPTIONS + _VERSION_OPTIONS for a in argv):
        print(help_text() if any(a in _HELP_OPTIONS for a in argv) else version_text())   # `-c x --help`
        return 0
    if argv[0] not in TRAINING_COMMANDS and not argv[0].startswith("-"):
        raise ConfigError(f"unknown subcommand {argv[0]!r}{_did_you_mean(argv[0])}; `cbsa-dense --help` lists them")
    # Told before Lightning is imported (seconds): config files that do not exist or do not compose (one line
    # naming the file), a --ckpt_path file that does not exist.
    from cbsa_dense.cli.config_files import compose_config_args

    argv = compose_config_args(argv)
    _check_ckpt_file(argv)
    from cbsa_dense.cli.lightning_cli import run

    return run(argv, from_console, overwrite, composed=True)


def _did_you_mean(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, [*TRAINING_COMMANDS, *EXTRA_COMMANDS], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: ``--ckpt_path`` values that are not files: Lightning's aliases, YAML's nulls (as in cli/stored_run.py).
_NOT_FILES = ("best", "last", "hpc", "registry", "null", "~")


def _check_ckpt_file(argv: list[str]) -> None:
    """CheckpointError (the one :func:`~cbsa_dense.models.checkpoint.read_checkpoint` raises) for a command-line
    ``--ckpt_path`` that names no file or folder, before Lightning and the models are imported; everything else
    about the file is checked when it is read (:func:`~cbsa_dense.cli.stored_run.prepare_args`)."""
    from pathlib import Path

    for index, arg in enumerate(argv):
        if arg == "--ckpt_path" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--ckpt_path="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if (value and value.split(":")[0].lower() not in _NOT_FILES and "://" not in value
                and not Path(value).exists()):
            raise CheckpointError(f"checkpoint file {value} does not exist: check the path")
        return
