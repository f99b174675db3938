"""The project's one error surface for problems in the user's input.

Every problem that cbsa_dense *detects* in the user's files, config, checkpoints or environment is raised
as a :class:`UserError` (or a subclass). Its message is one line that names the file, the entry
(annotation id, image id, key, setting) and the offending value, and says what to do. The ``cbsa-dense``
entry point prints such an error as ``cbsa-dense <subcommand>: error: <message>`` and exits with status
2, without a traceback (``--traceback`` or ``CBSA_DENSE_TRACEBACK=1`` shows it). Anything else that
escapes is a bug and keeps its traceback.

``UserError`` subclasses ``ValueError`` so that code catching ``ValueError`` around input parsing keeps
working.
"""

from __future__ import annotations

__all__ = ["UserError", "DataError", "ConfigError", "CheckpointError", "CheckpointNotFoundError", "OutputError", "user_message"]


class UserError(ValueError):
    """A problem in the user's input, config, files or environment (not a bug in cbsa_dense)."""


class DataError(UserError):
    """An input data file (image, mask, annotation json, predictions) is unreadable or inconsistent."""


class ConfigError(UserError):
    """A configuration value is invalid (non-positive size, impossible range, conflicting settings)."""


class CheckpointError(UserError):
    """A checkpoint or weights file is unreadable or does not fit the model it is loaded into."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint or weights file that does not exist (also a ``FileNotFoundError``, for code that catches that)."""


class OutputError(UserError):
    """An output location cannot be written, or writing would destroy existing results."""


def user_message(error: BaseException) -> str:
    """The one-line message of a :class:`UserError`, also when it was re-raised by a DataLoader worker.

    PyTorch's DataLoader re-raises a worker's exception as ``type(e)("Caught X in DataLoader worker
    process N.\\nOriginal Traceback ...\\nmodule.X: message")``; the original message is the text after
    the last ``X: `` line.
    """
    text = str(error)
    if "Original Traceback" in text:
        name = type(error).__name__
        lines = text.rstrip().splitlines()
        for index in range(len(lines) - 1, -1, -1):
            head, sep, rest = lines[index].partition(": ")
            if sep and head.rsplit(".", 1)[-1] == name:
                text = " ".join([rest, *(line.strip() for line in lines[index + 1:])])
                break
    return " ".join(text.split())
