"""Which config file set the key a parse error is about: :func:`config_error_context` names it (and the
``_base_`` file it came from) in the one-line error, unless the command line set that key."""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from cbsa_dense.cli.config_files import BASE_KEY, config_chain, config_source, config_values
from cbsa_dense.errors import ConfigError

__all__ = ["config_error_context", "name_config_in_message"]


def _offending_key(message: str) -> list[str]:
    """The dotted key a (condensed) jsonargparse message is about, as parts; [] when none is named."""
    key: list[str] = []
    lead = re.match(r"--([\w.\-+]+)", message)
    if lead:
        key = lead.group(1).rstrip("+").split(".")
    extra = (re.search(r"Option '([^']+)' is not accepted", message)
             or re.search(r"Group '([^']+)' does not accept option '([^']+)'", message))
    if extra:
        parts = [p for group in extra.groups() for p in group.split(".")]
        key = parts if not key else key + parts
    return key


def _find(mapping: object, parts: list[str]) -> bool:
    """Whether ``parts`` is set in ``mapping`` (``init_args`` steps may be written or left out)."""
    if not parts:
        return True
    if not isinstance(mapping, dict):
        return False
    head, rest = parts[0], parts[1:]
    if head in mapping:
        return _find(mapping[head], rest)
    if head == "init_args":
        return _find(mapping, rest)
    return isinstance(mapping.get("init_args"), dict) and _find(mapping["init_args"], parts)


def _given_value(message: str) -> str | None:
    """The offending value a (condensed) jsonargparse message quotes, if any."""
    found = re.search(r"got '([^']*)'", message) or re.search(r"Got value: (.*?)(?:; see --help.*)?$", message)
    return found.group(1).strip() if found else None


def _set_on_command_line(parts: list[str], argv: Sequence[str], given: str | None = None) -> bool:
    """Whether the command line sets ``parts`` (or a section that holds it) with ``--a.b.c``. When the message
    quotes the offending value (``given``) and the command line sets exactly that key to another value, the
    value came from a config (jsonargparse checks a config's values as it reads the config)."""
    bare = [p for p in parts if p != "init_args"]
    for index, arg in enumerate(argv):
        if not arg.startswith("--") or arg.startswith(("--config", "--print_config")):
            continue
        name, sep, value = arg[2:].partition("=")
        flag = [p for p in name.rstrip("+").split(".") if p != "init_args"]
        if not flag or flag != bare[:len(flag)]:
            continue
        if not sep:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        if given is not None and flag == bare and value != given:
            continue
        return True
    return False


def name_config_in_message(message: str, configs: Sequence[str | Path], argv: Sequence[str] = ()) -> str:
    """``message`` (a parse error) prefixed with the config that set the offending key: ``config F: ...``, or
    ``config F (from its _base_ B): ...`` when a base file set it. Unchanged when no config sets the key or the
    command line (``argv``) sets it."""
    key = _offending_key(message)
    if not key or _set_on_command_line(key, argv, _given_value(message)):
        return message
    for value in reversed(list(configs)):
        path = config_source(str(value))
        if path is None:
            continue
        try:
            files = config_chain(path)
        except ConfigError:
            continue
        for file, own in reversed(files):
            if _find(own, key):
                origin = "" if file == path else f" (from its {BASE_KEY} {file})"
                return f"config {path}{origin}: {message}"
    return message


@contextmanager
def config_error_context(argv: Sequence[str], configs: Sequence[str | Path] | None = None):
    """Inside it, a parse error (a ConfigError raised from jsonargparse's ArgumentError, or that ArgumentError
    itself) is re-raised as a ConfigError naming the config file, and the ``_base_`` file, that set the
    offending key. ``configs``: the config values to consider (default: the ``--config`` values of argv,
    composed YAML text included)."""
    from jsonargparse import ArgumentError

    configs = config_values(argv) if configs is None else list(configs)
    try:
        yield
    except ArgumentError as error:
        from cbsa_dense.config_errors import condense_parse_error

        raise ConfigError(name_config_in_message(condense_parse_error(str(error)), configs, argv)) from error
    except ConfigError as error:
        if not isinstance(error.__cause__, ArgumentError):
            raise
        named = name_config_in_message(str(error), configs, argv)
        if named == str(error):
            raise
        raise ConfigError(named) from error.__cause__
