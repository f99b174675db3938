"""``cbsa-dense configs [list | copy NAME [DEST] [--force] [--flat]]``: the configs shipped with cbsa_dense.

``list`` (the default) prints each shipped config's name and the first line of its comment. Any command's
``--config`` takes these names as they are (``cbsa-dense fit --config demo_seg.yaml``). ``copy`` writes one
out for editing (``DEST`` defaults to ``./<file name>``; a folder gets ``<folder>/<file name>``): with its
comments, its ``_base_`` entries rewritten to shipped names so that they still resolve from the copy's new
place; ``--flat`` writes the fully composed config instead, without ``_base_``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from cbsa_dense.cli import config_files
from cbsa_dense.cli.config_files import (
    BASE_KEY,
    config_bases,
    dump_config,
    load_config,
    parse_yaml,
    read_config_file,
    resolve_base,
    shipped_config,
    shipped_configs,
    unknown_config_message,
)
from cbsa_dense.errors import ConfigError, OutputError


def describe(path: Path) -> str:
    """The first comment line of a config file (its one-line description), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            return ""
    return ""


def _shipped_name(path: Path) -> str | None:
    try:
        return path.resolve().relative_to(config_files.CONFIG_DIR.resolve()).as_posix()
    except ValueError:
        return None


def _leading_comments(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return lines


def _rewrite_bases(text: str, source: Path) -> str:
    """``text`` (the file ``source``) with its ``_base_`` entries written as shipped names (absolute paths for
    bases outside the shipped configs), comments and the rest of the file kept."""
    config = read_config_file(source)
    bases = config_bases(source, config)
    if not bases:
        return text
    names = []
    for base in bases:
        resolved = resolve_base(base, source)
        names.append(_shipped_name(resolved) or str(resolved.resolve()))
    if names == bases:
        return text
    block = [f"{BASE_KEY}: {names[0]}"] if len(names) == 1 and isinstance(config[BASE_KEY], str) else \
        [f"{BASE_KEY}:", *(f"  - {name}" for name in names)]
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(BASE_KEY) and
                  line[len(BASE_KEY):].lstrip().startswith(":")), None)
    if start is not None:
        end = start + 1
        while end < len(lines) and lines[end].strip() and lines[end][:1] in (" ", "\t", "-"):
            end += 1
        rewritten = "\n".join([*lines[:start], *block, *lines[end:]]) + "\n"
        try:
            check = parse_yaml(rewritten)
        except yaml.YAMLError:
            check = None
        if isinstance(check, dict) and check.get(BASE_KEY) in (names, names[0]) and \
                {k: v for k, v in check.items() if k != BASE_KEY} == \
                {k: v for k, v in config.items() if k != BASE_KEY}:
            return rewritten
    body = {BASE_KEY: names, **{k: v for k, v in config.items() if k != BASE_KEY}}   # unusual layout: re-dump
    return "\n".join(_leading_comments(text)) + "\n" + dump_config(body)


def _find_shipped(name: str) -> Path:
    path = shipped_config(name)
    if path is None:
        raise ConfigError(unknown_config_message(name, "shipped config").replace(
            "does not exist, and no shipped config has that name", "does not exist"))
    return path


def list_configs() -> int:
    names = shipped_configs()
    if not names:
        print(f"no shipped configs found in {config_files.CONFIG_DIR}")
        return 0
    width = max(len(name) for name in names)
    for name in names:
        print(f"{name:<{width}}  {describe(config_files.CONFIG_DIR / name)}".rstrip())
    return 0


def copy_config(name: str, dest: str | None, force: bool = False, flat: bool = False) -> tuple[Path, str]:
    """Write the shipped config ``name`` to ``dest`` (see the module doc); returns the written path and the
    shipped config's name."""
    source = _find_shipped(name)
    shipped = _shipped_name(source)
    target = Path(dest) if dest else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists() and not force:
        raise OutputError(f"{target} already exists; pass --force to overwrite it, or give another DEST")
    if target.exists() and not target.is_file():
        raise OutputError(f"{target} exists and is not a file; give another DEST")
    text = source.read_text(encoding="utf-8")
    if flat:
        header = _leading_comments(text) + [f"# Composed from the shipped config {shipped} "
                                            f"(`cbsa-dense configs copy --flat`): {BASE_KEY} files merged in."]
        text = "\n".join(header) + "\n" + dump_config(load_config(source))
    else:
        text = _rewrite_bases(text, source)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as error:
        raise OutputError(f"cannot write {target}: {error.strerror or error}; give another DEST") from error
    return target, shipped


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cbsa-dense configs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action")
    sub.add_parser("list", help="list the shipped configs (the default)")
    copy = sub.add_parser("copy", help="copy a shipped config out for editing")
    copy.add_argument("name", help="a shipped config name (see `cbsa-dense configs`), e.g. seg_custom.yaml")
    copy.add_argument("dest", nargs="?", default=None, help="file or folder to write (default: ./<file name>)")
    copy.add_argument("--force", action="store_true", help="overwrite an existing file")
    copy.add_argument("--flat", action="store_true", help=f"write the fully composed config, without {BASE_KEY}")
    args = parser.parse_args(argv)
    if args.action in (None, "list"):
        return list_configs()
    target, shipped = copy_config(args.name, args.dest, force=args.force, flat=args.flat)
    print(f"wrote {target} (from the shipped config {shipped})")
    quoted = shlex.quote(str(target))
    sections = set(load_config(target))
    if {"model", "data"} <= sections:
        print(f"edit it, then run: cbsa-dense fit --config {quoted}")
    elif sections == {"trainer"}:
        print(f"edit it, then combine it with a task config: cbsa-dense fit --config demo_seg.yaml --config {quoted}")
    else:
        print(f"a building block: name it in your config as `{BASE_KEY}: {target}` (sets {', '.join(sorted(sections))})")
    return 0
