"""Locating and composing config files.

**Where a config comes from.** ``--config X`` (and every other command's ``--config``) takes, in this
order: an existing file ``X``; else a shipped config (:data:`CONFIG_DIR`) by name:
exactly ``X``, ``X`` + ``.yaml``, or ``X`` without a leading ``configs/`` (the old in-repository form,
``configs/demo_seg.yaml``). ``cbsa-dense configs`` lists the shipped names.

**Composition.** A config may name other configs under a top-level ``_base_:`` key (one name or a list).
Each base is looked up beside the config file first, then as a shipped name; bases may have bases of
their own. The result is the bases merged in order, then the file itself on top (:func:`merge_configs`):
mappings merge key by key, except that a mapping with another ``class_path`` than the one it overrides
replaces it whole (the other class's ``init_args`` would not fit); every other value, lists and ``null``
included, replaces. ``_base_`` itself never reaches the parser.

**Handing it to jsonargparse.** :func:`compose_config_args` rewrites a command line: a config without
``_base_`` is passed as its path (jsonargparse's own messages then name the file), a composed one as the
merged YAML text (jsonargparse's ``--config`` takes a YAML string);
:func:`cbsa_dense.cli.config_blame.config_error_context` puts the user's file back into a parse error.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from cbsa_dense.errors import ConfigError

__all__ = ["CONFIG_DIR", "BASE_KEY", "shipped_configs", "shipped_config", "resolve_config", "read_config_file",
           "load_config", "merge_configs", "composed_config_arg", "compose_config_args", "config_values",
           "dump_config", "parse_yaml", "config_bases", "resolve_base",
           "unknown_config_message", "is_inline_yaml", "config_source", "config_chain"]


def _config_dir() -> Path:
    """The shipped configs: ``cbsa_dense/configs`` in an installed wheel (the build maps the repository's
    top-level ``configs/`` there, see pyproject.toml), else ``configs/`` beside the package (a source checkout,
    an editable install)."""
    package = Path(__file__).parent.parent                      # cbsa_dense/ (this file is cbsa_dense/cli/...)
    installed = package / "configs"
    return installed if installed.is_dir() else package.resolve().parent / "configs"


#: The shipped configs (the repository's ``configs/``; ``cbsa_dense/configs`` inside a wheel).
CONFIG_DIR = _config_dir()
#: Top-level key naming the configs a config builds on.
BASE_KEY = "_base_"
#: Command-line flags that take a config (``--config X``, ``--config=X``, ``-c X``, ``-c=X``).
CONFIG_FLAGS = ("--config", "-c")
_LEGACY_PREFIXES = ("configs/", "cbsa_dense/configs/")


# --------------------------------------------------------------------------------------------- YAML
def parse_yaml(text: str):
    """YAML text as jsonargparse reads it (its public ``get_loader("yaml")``: ``1e-3`` is a float, dates stay
    strings)."""
    from jsonargparse import get_loader

    return get_loader("yaml")(text)


class _Dumper(yaml.SafeDumper):
    """Safe YAML dumper that quotes exactly the strings :func:`parse_yaml` would read as something else."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    try:
        plain = "\n" not in value and parse_yaml(value) == value
    except yaml.YAMLError:
        plain = False
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=None if plain else "'")


_Dumper.add_representer(str, _represent_str)


def dump_config(config: dict) -> str:
    """YAML text of a config mapping, keys in their order (jsonargparse reads ``class_path`` before ``init_args``)."""
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


# --------------------------------------------------------------------------------------------- finding
def shipped_configs() -> list[str]:
    """Names of the shipped configs, relative to :data:`CONFIG_DIR`, posix, sorted."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml") if p.is_file())


def shipped_config(name: str) -> Path | None:
    """The shipped config called ``name`` (exact, without ``.yaml``, or with a leading ``configs/``), or None."""
    name = str(name).replace("\\", "/").strip()
    while name.startswith("./"):
        name = name[2:]
    for prefix in _LEGACY_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if not name or name.startswith("/") or ".." in name.split("/"):
        return None
    for candidate in (name, name + ".yaml"):
        path = CONFIG_DIR / candidate
        if path.is_file():
            return path
    return None


def unknown_config_message(value: str, what: str) -> str:
    names = shipped_configs()
    wanted = str(value).replace("\\", "/")
    for prefix in _LEGACY_PREFIXES:
        wanted = wanted.removeprefix(prefix)
    wanted = wanted.removesuffix(".yaml")
    stems = {name.removesuffix(".yaml"): name for name in names}
    stems.update({name.rsplit("/", 1)[-1].removesuffix(".yaml"): name for name in names if "/" in name})
    close = difflib.get_close_matches(wanted, list(stems), n=6, cutoff=0.5)
    close += difflib.get_close_matches(wanted.rsplit("/", 1)[-1], list(stems), n=6, cutoff=0.5)
    matches = list(dict.fromkeys(stems[c] for c in close))[:4]
    hint = f"close shipped configs: {', '.join(matches)}; " if matches else ""
    return (f"{what} {value} does not exist, and no shipped config has that name; {hint}"
            "`cbsa-dense configs` lists the shipped configs")


def _is_file(value: str | Path) -> bool:
    try:
        return Path(value).expanduser().is_file()
    except (OSError, ValueError):               # a name too long for the file system, a NUL byte
        return False


def resolve_config(value: str | Path) -> Path:
    """The config file ``value`` names: an existing file first, else a shipped config by name (see the
    module doc). ConfigError (one line, with close shipped names) when neither exists."""
    value = str(value)
    if _is_file(value):
        return Path(value).expanduser()
    shipped = shipped_config(value)
    if shipped is not None:
        return shipped
    try:
        is_dir = Path(value).expanduser().is_dir()
    except (OSError, ValueError):
        is_dir = False
    if is_dir:
        raise ConfigError(f"config {value} is a directory; give a YAML file (or a shipped config name: "
                          "`cbsa-dense configs` lists them)")
    raise ConfigError(unknown_config_message(value, "config file"))


def is_inline_yaml(value: str) -> bool:
    """Whether a ``--config`` value is YAML text rather than a file name (jsonargparse accepts both)."""
    return "\n" in value or value.lstrip().startswith("{")


# --------------------------------------------------------------------------------------------- reading
def read_config_file(path: str | Path) -> dict:
    """The mapping in one config file (its ``_base_`` key, if any, left in). ConfigError naming the file
    (and the line and column of a syntax error) unless it holds a non-empty YAML mapping."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config {path} is not a text file ({error.reason} at byte {error.start}): give a YAML "
                          "file") from error
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from error
    try:
        loaded = parse_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        lines = text.splitlines()
        tab = bool(mark) and mark.line < len(lines) and "\t" in lines[mark.line]
        raise ConfigError(f"config {path} is not valid YAML: {problem}{where}"
                          + ("; YAML indents with spaces, not tabs" if tab else "; fix the syntax")) from error
    if loaded is None:
        raise ConfigError(f"config {path} is empty: give the sections to set (trainer:, model:, data:, ...)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} holds a YAML {type(loaded).__name__}, not a mapping of sections "
                          "(trainer:, model:, data:, ...): fix the file")
    return loaded


def config_bases(path: str | Path, config: dict | None = None) -> list[str]:
    """The ``_base_`` entries of a config file, as written (a string becomes a one-element list)."""
    config = read_config_file(path) if config is None else config
    bases = config.get(BASE_KEY)
    if bases is None:
        return []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b.strip() for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a config name or a list of config names, got {bases!r}")
    return list(bases)


def resolve_base(base: str, config_path: str | Path) -> Path:
    """A ``_base_`` entry of ``config_path``: beside that file first, then a shipped config."""
    folder = Path(config_path).parent
    local = folder / Path(base).expanduser()
    if _is_file(local):
        return local
    shipped = shipped_config(base)
    if shipped is not None:
        return shipped
    raise ConfigError(f"{config_path}: {BASE_KEY} {base!r} not found (looked in {folder} and the shipped "
                      "configs; `cbsa-dense configs` lists them)")


def _same_class(a: object, b: object) -> bool:
    """Two ``class_path`` values name the same class (a short name matches the full path's last part)."""
    if a == b:
        return True
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    if "." in a and "." in b:
        return False
    return a.rsplit(".", 1)[-1] == b.rsplit(".", 1)[-1]


def merge_configs(base: dict, override: dict) -> dict:
    """``override`` on top of ``base`` (neither is changed): mappings merge recursively, unless both have a
    ``class_path`` and they differ (then the override replaces the mapping: the other class's ``init_args``
    must not leak); any other value (lists and ``null`` included) replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        old = merged.get(key)
        if (isinstance(old, dict) and isinstance(value, dict)
                and not ("class_path" in old and "class_path" in value
                         and not _same_class(old["class_path"], value["class_path"]))):
            merged[key] = merge_configs(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    if "class_path" in merged and next(iter(merged)) != "class_path":   # jsonargparse needs it first
        merged = {"class_path": merged["class_path"], **{k: v for k, v in merged.items() if k != "class_path"}}
    return merged


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """Every file that makes up ``path``, in merge order (bases depth-first, then the file), each with its
    own mapping (``_base_`` removed). ConfigError on a cycle."""
    key = path.resolve()
    if key in seen:
        names = [str(p) for p in (*seen[seen.index(key):], key)]
        raise ConfigError(f"{path}: {BASE_KEY} files include each other in a cycle: {' -> '.join(names)}")
    own = read_config_file(path)
    bases = config_bases(path, own)
    own = {k: v for k, v in own.items() if k != BASE_KEY}
    files: list[tuple[Path, dict]] = []
    for base in bases:
        files += _chain(resolve_base(base, path), (*seen, key))
    return [*files, (path, own)]


def _merged(files: list[tuple[Path, dict]]) -> dict:
    merged: dict = {}
    for _, own in files:
        merged = merge_configs(merged, own)
    return merged


def load_config(value: str | Path) -> dict:
    """The fully composed mapping of a config (a file or a shipped name): its ``_base_`` files merged in order,
    the file itself on top, without the ``_base_`` key."""
    return _merged(_chain(resolve_config(value)))


# --------------------------------------------------------------------------------------------- command lines
#: Composed YAML text handed to jsonargparse -> the user's config file it was made from.
_COMPOSED: dict[str, Path] = {}


def composed_config_arg(value: str) -> str:
    """What to hand jsonargparse for ``--config value``: the resolved file when it has no ``_base_`` (so that
    jsonargparse's messages name it), else the composed config as YAML text. YAML text is passed unchanged."""
    value = str(value)
    if is_inline_yaml(value) and not _is_file(value):
        return value
    path = resolve_config(value)
    files = _chain(path)                        # each file read once, checked, bases resolved
    if len(files) == 1:
        return str(path)
    text = dump_config(_merged(files))
    _COMPOSED[text] = path
    return text


def _flag_values(argv: Sequence[str], flags: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    """``(index, flag, value)`` of every ``FLAG VALUE`` / ``FLAG=VALUE`` in argv (index of the value's element)."""
    for index, arg in enumerate(argv):
        if arg in flags and index + 1 < len(argv):
            yield index + 1, arg, argv[index + 1]
        else:
            flag, sep, value = arg.partition("=")
            if sep and flag in flags:
                yield index, flag, value


def config_values(argv: Sequence[str]) -> list[str]:
    """The values of ``--config`` / ``-c`` in a command line, in order."""
    return [value for _, _, value in _flag_values(argv, CONFIG_FLAGS)]


def _trainer_preset_arg(value: str) -> str | None:
    """``--trainer X`` with X a trainer preset (a shipped name like ``trainer/ddp.yaml``, or a file holding only a
    ``trainer:`` section): that section as YAML text, which ``--trainer`` takes. None: leave the value as it is
    (a file of trainer settings, YAML text), for jsonargparse."""
    if is_inline_yaml(value):
        return None
    shipped = None if _is_file(value) else shipped_config(value)
    if shipped is None and not _is_file(value):
        if value.endswith((".yaml", ".yml")):
            raise ConfigError(unknown_config_message(value, "--trainer file"))
        return None
    config = load_config(shipped or value)
    if set(config) == {"trainer"} and isinstance(config["trainer"], dict):
        return dump_config(config["trainer"])
    if shipped is not None:
        raise ConfigError(f"--trainer {value}: the shipped config {shipped.relative_to(CONFIG_DIR).as_posix()} is "
                          f"not a trainer preset (it sets {', '.join(map(str, config))}); give it with --config")
    return None


def compose_config_args(argv: Sequence[str]) -> list[str]:
    """A command line with every ``--config``/``-c`` value resolved and composed (:func:`composed_config_arg`),
    and every ``--trainer`` value that names a trainer preset (``trainer/ddp.yaml``) replaced by its
    ``trainer:`` section. Errors (missing file, bad YAML, a missing ``_base_``) are ConfigErrors naming the file."""
    out = list(argv)
    for index, flag, value in _flag_values(argv, CONFIG_FLAGS):
        arg = composed_config_arg(value)
        out[index] = arg if out[index] == value else f"{flag}={arg}"
    for index, flag, value in _flag_values(argv, ("--trainer",)):
        arg = _trainer_preset_arg(value)
        if arg is not None:
            out[index] = arg if out[index] == value else f"{flag}={arg}"
    return out


def config_source(value: str) -> Path | None:
    """The user's config file behind a ``--config`` value (composed YAML text included); None for inline YAML."""
    if value in _COMPOSED:
        return _COMPOSED[value]
    if is_inline_yaml(value) and not _is_file(value):
        return None
    try:
        return resolve_config(value)
    except ConfigError:
        return None


def config_chain(path: Path) -> list[tuple[Path, dict]]:
    """``(file, its own mapping)`` of a config and its ``_base_`` files, bases first."""
    return _chain(path)
