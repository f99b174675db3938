"""Checks the ``cbsa-dense`` entry point runs before any work: parse errors and output locations. (Config
files are checked as they are resolved and composed: :mod:`cbsa_dense.config_files`; a ``--ckpt_path``
checkpoint when it is read: :mod:`cbsa_dense.stored_run`.)"""

from __future__ import annotations

import re
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


_UNION_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:")


def condense_parse_error(message: str) -> str:
    """One line from jsonargparse's nested report: the full key of the offending setting (``data.init_args.mean``),
    the class it belongs to, and the innermost cause, instead of the dump of every Union subtype tried."""
    keys: list[str] = []
    causes: list[str] = []
    expected: list[str] = []
    given = owner = None
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        if not line or line.startswith(_UNION_NOISE):
            continue
        key = re.match(r'Parser key "([^"]+)":\s*(.*)$', line)
        cls = re.match(r"Problem with given class_path '([^']+)':\s*(.*)$", line)
        if (key or cls) and (causes or expected):
            break                                      # the next alternative of a Union: the first one is the story
        if key:
            keys += ["init_args", key.group(1)] if owner and keys and keys[-1] != "init_args" else [key.group(1)]
        elif cls:
            owner = cls.group(1)
        if key or cls:
            causes += [(key or cls).group(2)] if (key or cls).group(2) else []
        elif re.match(r"Expected a <class '([^']+)'>$", line):
            expected.append(re.match(r"Expected a <class '([^']+)'>$", line).group(1))
        elif line.startswith("Given value:"):
            given = given or line.split(":", 1)[1].strip()
        else:
            causes.append(line)
    if not causes and expected:
        kinds = " or ".join(dict.fromkeys("null" if e == "NoneType" else e for e in expected))
        causes = [f"expected {kinds}, got {given!r}" if given is not None else f"expected {kinds}"]
    text = re.sub(r"<class '(?:builtins\.)?([^']+)'>", r"\1", "; ".join(c.rstrip(".") for c in causes))
    text = text or " ".join(message.split())
    where = ".".join(keys)
    if where:
        text = f"--{where}" + (f" ({owner})" if owner else "") + f": {text}"
    return f"{text}; see --help for the accepted options"

