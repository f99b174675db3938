"""One line from jsonargparse's report of a config or command-line value that does not parse.

Below the command line on purpose: the CLI (:mod:`cbsa_dense.cli`) tells parse errors with it, and so does
loading a task from the config stored in a checkpoint (:mod:`cbsa_dense.tasks.loading`), which must not import
the CLI.
"""

from __future__ import annotations

import re

__all__ = ["condense_parse_error"]

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

