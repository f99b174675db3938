"""Checks the ``cbsa-dense`` entry point runs before any work: output locations. (Parse errors are told in one
line by :func:`cbsa_dense.config_errors.condense_parse_error`; config files are checked as they are resolved and
composed: :mod:`cbsa_dense.cli.config_files`; a ``--ckpt_path`` checkpoint when it is read:
:mod:`cbsa_dense.cli.stored_run`.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cbsa_dense.errors import OutputError


def check_writable(directory: str | Path, what: str) -> None:
    """Create ``directory`` if needed and make sure a file can be written there (OutputError if not)."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".cbsa-dense-write-test-"):
            pass
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {error.strerror or error}; choose a writable location") \
            from error
