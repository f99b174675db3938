"""The ``cbsa-dense`` entry point: :func:`main` (exported as :func:`cbsa_dense.cli.main`).

Training subcommands (``fit``, ``validate``, ``test``, ``predict``) are Lightning's, through
:class:`~cbsa_dense.cli.lightning_cli.CBSADenseCLI` (a ``LightningCLI`` in subclass mode: ``--model`` and
``--data`` take any ``LightningModule`` / ``LightningDataModule`` by ``class_path`` or class name). The other
subcommands are plain commands in :mod:`cbsa_dense.cli.commands`, each a module with a ``main(argv) -> int``
function, imported only when used; Lightning itself is imported only for the training subcommands, so
``cbsa-dense configs`` or ``cbsa-dense score ...`` start fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence

from cbsa_dense.errors import ConfigError, UserError, user_message

#: Extra subcommands: name -> (module with ``main(argv)``, one-line help).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("cbsa_dense.cli.commands.score", "score predictions against ground truth (seg | coco)"),
    "info": ("cbsa_dense.cli.commands.info", "parameter counts and GFLOPs of a config's model"),
    "benchmark": ("cbsa_dense.cli.commands.benchmark", "speed/memory benchmarks: attention | encoder | train"),
    "export": ("cbsa_dense.cli.commands.export", "export a checkpoint to ONNX or TorchScript"),
    "explain": ("cbsa_dense.cli.commands.explain", "visualize CBSA extraction maps of a checkpoint"),
    "configs": ("cbsa_dense.cli.commands.configs", "list the shipped configs, or copy one out for editing"),
    "linearize": ("cbsa_dense.cli.commands.linearize", "match a CBSA encoder to its pretrained softmax attention"),
}


def _print_extra_help() -> None:
    lines = ["", "Other subcommands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()]
    print("\n".join(lines))


#: Environment variable that, when set to a non-empty value other than ``0``, shows tracebacks of user errors.
TRACEBACK_ENV = "CBSA_DENSE_TRACEBACK"


class _DropTip(logging.Filter):
    """Drop Lightning's advertisement lines ("Tip: ... try installing litlogger / litmodels") printed on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()     # logging (litlogger), uploads (litmodels)


def _quiet_known_noise() -> None:
    """Filter messages that every run printed and that tell the user nothing actionable."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
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
    if argv and argv[0] in EXTRA_COMMANDS:
        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    from cbsa_dense.cli.lightning_cli import run

    return run(argv, from_console, overwrite, extra_help=_print_extra_help)
