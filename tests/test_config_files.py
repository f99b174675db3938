"""Config files: shipped names, ``_base_`` composition, and ``cbsa-dense configs``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from cbsa_dense.cli import config_files, main
from cbsa_dense.cli.config_files import (
    BASE_KEY,
    CONFIG_DIR,
    compose_config_args,
    composed_config_arg,
    config_values,
    dump_config,
    load_config,
    merge_configs,
    parse_yaml,
    resolve_config,
    shipped_config,
    shipped_configs,
)
from cbsa_dense.errors import ConfigError
from tests.conftest import cli_user_error


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ resolution
def test_shipped_configs_are_sorted_posix_names():
    names = shipped_configs()
    assert names == sorted(names)
    assert {"demo_seg.yaml", "demo_det.yaml", "paper/ade20k_cbt_small.yaml", "trainer/ddp.yaml"} <= set(names)
    assert all("\\" not in n and not n.startswith("/") and n.endswith(".yaml") for n in names)
    assert all((CONFIG_DIR / n).is_file() for n in names)


@pytest.mark.parametrize("name", ["demo_seg.yaml", "demo_seg", "configs/demo_seg.yaml", "./configs/demo_seg.yaml",
                                  "cbsa_dense/configs/demo_seg.yaml"])
def test_shipped_name_resolves_from_an_empty_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(name) == CONFIG_DIR / "demo_seg.yaml"


def test_nested_shipped_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("paper/ade20k_cbt_small") == CONFIG_DIR / "paper" / "ade20k_cbt_small.yaml"
    assert resolve_config("configs/trainer/ddp.yaml") == CONFIG_DIR / "trainer" / "ddp.yaml"


def test_a_local_file_shadows_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "demo_seg.yaml", "trainer:\n  max_epochs: 3\n")
    assert resolve_config("demo_seg.yaml") == Path("demo_seg.yaml")
    assert load_config("demo_seg.yaml") == {"trainer": {"max_epochs": 3}}
    assert resolve_config("demo_seg") == CONFIG_DIR / "demo_seg.yaml"     # no such local file: the shipped one


def test_unknown_name_lists_close_matches(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve_config("demo_sge.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert "demo_sge.yaml does not exist, and no shipped config has that name" in message
    assert "demo_seg.yaml" in message and "cbsa-dense configs" in message


def test_names_never_leave_the_config_folder(tmp_path):
    assert shipped_config("../cli.py") is None
    assert shipped_config("/etc/passwd") is None
    assert shipped_config("") is None
    with pytest.raises(ConfigError, match="is a directory"):
        resolve_config(str(tmp_path))


# ------------------------------------------------------------------------------------------------ composition
def test_nested_mappings_merge_and_base_key_is_dropped(tmp_path):
    _write(tmp_path / "base.yaml", "trainer:\n  max_epochs: 5\n  devices: 1\ndata:\n  init_args: {root: a, batch_size: 4}\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\ntrainer:\n  max_epochs: 1\n"
                                           "data:\n  init_args: {batch_size: 2}\n")
    assert load_config(child) == {"trainer": {"max_epochs": 1, "devices": 1},
                                  "data": {"init_args": {"root": "a", "batch_size": 2}}}


def test_another_class_path_replaces_the_mapping(tmp_path):
    _write(tmp_path / "base.yaml", "model:\n  class_path: pkg.mod.A\n  init_args: {x: 1, y: 2}\n")
    other = _write(tmp_path / "other.yaml", "_base_: base.yaml\nmodel:\n  class_path: pkg.mod.B\n  init_args: {z: 3}\n")
    same = _write(tmp_path / "same.yaml", "_base_: base.yaml\nmodel:\n  class_path: pkg.mod.A\n  init_args: {y: 5}\n")
    short = _write(tmp_path / "short.yaml", "_base_: base.yaml\nmodel:\n  class_path: A\n  init_args: {y: 6}\n")
    assert load_config(other) == {"model": {"class_path": "pkg.mod.B", "init_args": {"z": 3}}}
    assert load_config(same) == {"model": {"class_path": "pkg.mod.A", "init_args": {"x": 1, "y": 5}}}
    assert load_config(short)["model"]["init_args"] == {"x": 1, "y": 6}       # a short name of the same class


def test_class_path_stays_first_after_a_merge():
    merged = merge_configs({"head": {"init_args": {"a": 1}}}, {"head": {"class_path": "X", "init_args": {"b": 2}}})
    assert list(merged["head"]) == ["class_path", "init_args"]           # jsonargparse reads class_path first
    assert merged["head"]["init_args"] == {"a": 1, "b": 2}


def test_lists_and_null_replace(tmp_path):
    _write(tmp_path / "base.yaml", "callbacks: [a, b, c]\nlogger: {name: x}\nkeep: 1\n")
    child = _write(tmp_path / "child.yaml", "_base_: [base.yaml]\ncallbacks: [d]\nlogger: null\n")
    assert load_config(child) == {"callbacks": ["d"], "logger": None, "keep": 1}


def test_bases_merge_in_order_recursively_each_beside_its_file(tmp_path):
    _write(tmp_path / "sub" / "d.yaml", "x: 0\nw: d\n")
    _write(tmp_path / "sub" / "b.yaml", "_base_: d.yaml\nx: 1\ny: 1\n")       # relative to sub/, its own folder
    _write(tmp_path / "c.yaml", "y: 2\n")
    top = _write(tmp_path / "a.yaml", "_base_: [sub/b.yaml, c.yaml]\nz: 3\n")
    assert load_config(top) == {"x": 1, "w": "d", "y": 2, "z": 3}


def test_a_base_can_be_a_shipped_config(tmp_path):
    child = _write(tmp_path / "child.yaml", "_base_: trainer/cpu_debug.yaml\nextra: 1\n")
    assert load_config(child) == {**load_config("trainer/cpu_debug.yaml"), "extra": 1}


def test_floats_are_read_as_jsonargparse_reads_them(tmp_path):
    config = _write(tmp_path / "c.yaml", "lr: 1e-3\nwhen: 2024-01-01\nname: '1e-3'\n")
    loaded = load_config(config)
    assert loaded["lr"] == pytest.approx(1e-3) and loaded["when"] == "2024-01-01" and loaded["name"] == "1e-3"
    composed = _write(tmp_path / "d.yaml", "_base_: c.yaml\n")
    assert parse_yaml(composed_config_arg(str(composed))) == loaded          # the string stays a string


def test_cycle_is_an_error_naming_the_files(tmp_path):
    _write(tmp_path / "a.yaml", "_base_: b.yaml\nx: 1\n")
    _write(tmp_path / "b.yaml", "_base_: a.yaml\ny: 1\n")
    with pytest.raises(ConfigError, match="cycle") as info:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(info.value) and "b.yaml" in str(info.value)
    _write(tmp_path / "self.yaml", "_base_: self.yaml\nx: 1\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_a_base_used_twice_is_not_a_cycle(tmp_path):
    _write(tmp_path / "common.yaml", "x: 1\n")
    _write(tmp_path / "b.yaml", "_base_: common.yaml\ny: 1\n")
    top = _write(tmp_path / "a.yaml", "_base_: [common.yaml, b.yaml]\n")
    assert load_config(top) == {"x": 1, "y": 1}


def test_missing_base_names_the_file_and_where_it_looked(tmp_path):
    child = _write(tmp_path / "child.yaml", "_base_: nope.yaml\nx: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert str(info.value) == (f"{child}: _base_ 'nope.yaml' not found (looked in {tmp_path} and the shipped "
                               "configs; `cbsa-dense configs` lists them)")


@pytest.mark.parametrize("text, expected", [
    ("x: [unclosed\n", "is not valid YAML"),
    ("- 1\n- 2\n", "holds a YAML list"),
    ("", "is empty"),
])
def test_a_broken_base_is_named(tmp_path, text, expected):
    base = _write(tmp_path / "broken.yaml", text)
    child = _write(tmp_path / "child.yaml", "_base_: broken.yaml\nx: 1\n")
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(child)
    assert str(base) in str(info.value)


def test_base_key_must_name_files(tmp_path):
    child = _write(tmp_path / "child.yaml", "_base_: 3\nx: 1\n")
    with pytest.raises(ConfigError, match=r"_base_ must be a config name or a list"):
        load_config(child)


def test_composed_config_arg(tmp_path):
    plain = _write(tmp_path / "plain.yaml", "x: 1\n")
    child = _write(tmp_path / "child.yaml", "_base_: plain.yaml\ny: 2\n")
    assert composed_config_arg(str(plain)) == str(plain)                    # jsonargparse names the file
    text = composed_config_arg(str(child))
    assert BASE_KEY not in text and parse_yaml(text) == {"x": 1, "y": 2}
    assert composed_config_arg("{trainer: {max_epochs: 1}}") == "{trainer: {max_epochs: 1}}"   # YAML text
    shipped = composed_config_arg("demo_seg")
    assert shipped == str(CONFIG_DIR / "demo_seg.yaml") or parse_yaml(shipped) == load_config("demo_seg")


def test_compose_config_args_rewrites_every_config_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "plain.yaml", "x: 1\n")
    _write(tmp_path / "child.yaml", "_base_: plain.yaml\ny: 2\n")
    argv = ["fit", "--config", "plain.yaml", "-c", "child.yaml", "--config=child.yaml", "-c=plain.yaml", "--x", "1"]
    out = compose_config_args(argv)
    assert out[:3] == ["fit", "--config", "plain.yaml"] and out[-2:] == ["--x", "1"]
    assert parse_yaml(out[4]) == {"x": 1, "y": 2}
    assert out[5].startswith("--config=") and parse_yaml(out[5].split("=", 1)[1]) == {"x": 1, "y": 2}
    assert out[6] == "-c=plain.yaml"
    assert len(config_values(out)) == 4


def test_trainer_presets_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = compose_config_args(["fit", "--trainer", "trainer/cpu_debug.yaml"])
    assert parse_yaml(out[2]) == load_config("trainer/cpu_debug.yaml")["trainer"]
    out = compose_config_args(["fit", "--trainer=trainer/cpu_debug"])
    assert parse_yaml(out[1].split("=", 1)[1]) == load_config("trainer/cpu_debug.yaml")["trainer"]
    _write(tmp_path / "mine.yaml", "max_epochs: 2\n")                        # a file of trainer settings: as is
    assert compose_config_args(["fit", "--trainer", "mine.yaml"]) == ["fit", "--trainer", "mine.yaml"]
    with pytest.raises(ConfigError, match="not a trainer preset"):
        compose_config_args(["fit", "--trainer", "demo_seg.yaml"])
    with pytest.raises(ConfigError, match="does not exist"):
        compose_config_args(["fit", "--trainer", "trainer/nope.yaml"])


# ------------------------------------------------------------------------------------------------ the CLI
def _print_config(argv: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_fit_takes_a_composed_config_from_an_empty_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    _write(tmp_path / "child.yaml", "_base_: demo_seg.yaml\ntrainer:\n  max_epochs: 1\n")
    printed = _print_config(["fit", "--config", str(tmp_path / "child.yaml"), "--print_config"])
    reference = _print_config(["fit", "--config", "demo_seg.yaml", "--trainer.max_epochs", "1", "--print_config"])
    assert printed["trainer"]["max_epochs"] == 1
    assert printed == reference


def test_a_parse_error_names_the_config_and_base_that_set_the_key(tmp_path, capsys):
    _write(tmp_path / "base.yaml", "_base_: demo_seg.yaml\ntrainer:\n  max_epochs: abc\n")
    child = _write(tmp_path / "child.yaml", "_base_: base.yaml\nseed_everything: 1\n")
    line = cli_user_error(["fit", "--config", str(child), "--print_config"], capsys)
    assert f"config {child} (from its _base_ {tmp_path / 'base.yaml'}): --trainer.max_epochs" in line, line
    bogus = _write(tmp_path / "bogus.yaml", "_base_: demo_seg.yaml\nbogus_key: 1\n")
    line = cli_user_error(["fit", "--config", str(bogus), "--print_config"], capsys)
    assert f"config {bogus}: " in line and "bogus_key" in line, line


def test_a_command_line_value_is_not_blamed_on_the_config(capsys):
    line = cli_user_error(["fit", "--config", "demo_seg.yaml", "--trainer.max_epochs", "abc", "--print_config"], capsys)
    assert "--trainer.max_epochs" in line and "config " not in line, line


def test_unknown_config_name_through_the_cli(capsys):
    line = cli_user_error(["fit", "--config", "demo_sge.yaml"], capsys)
    assert "demo_sge.yaml does not exist" in line and "demo_seg.yaml" in line, line


# ------------------------------------------------------------------------------------------------ cbsa-dense configs
def _configs(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(["configs", *argv]) == 0
    return capsys.readouterr().out


def test_configs_lists_names_and_descriptions(capsys):
    out = _configs([], capsys)
    assert out == _configs(["list"], capsys)
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == shipped_configs()
    first = (CONFIG_DIR / "demo_seg.yaml").read_text().splitlines()[0].lstrip("#").strip()
    assert any(line.startswith("demo_seg.yaml") and line.endswith(first) for line in lines)


@pytest.mark.parametrize("name", shipped_configs())
def test_a_copied_config_composes_as_the_shipped_one(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "out" / "copy.yaml"
    out = _configs(["copy", name, str(dest)], capsys)
    assert f"wrote {dest}" in out and ("cbsa-dense fit --config" in out or f"{BASE_KEY}: {dest}" in out), out
    assert load_config(dest) == load_config(name)
    original = (CONFIG_DIR / name).read_text().splitlines()
    assert dest.read_text().splitlines()[0] == original[0]                   # comments kept


def test_copy_rewrites_relative_bases_to_shipped_names(tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "shipped"
    _write(shipped / "base" / "x.yaml", "# x\nx: 1\n")
    _write(shipped / "base" / "y.yaml", "# y: builds on x\n_base_: x.yaml   # beside me\ny: 2  # why\n")
    _write(shipped / "base" / "z.yaml", "_base_:\n  - x.yaml\n  - y.yaml\nz: 3\n")
    monkeypatch.setattr(config_files, "CONFIG_DIR", shipped)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    _configs(["copy", "base/y.yaml"], capsys)
    text = (work / "y.yaml").read_text()
    assert parse_yaml(text)[BASE_KEY] == "base/x.yaml" and "# y: builds on x" in text and "# why" in text
    assert load_config(work / "y.yaml") == {"x": 1, "y": 2}
    _configs(["copy", "base/z"], capsys)
    assert parse_yaml((work / "z.yaml").read_text())[BASE_KEY] == ["base/x.yaml", "base/y.yaml"]
    assert load_config(work / "z.yaml") == {"x": 1, "y": 2, "z": 3}


def test_copy_default_destination_and_overwrite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _configs(["copy", "seg_custom"], capsys)
    target = tmp_path / "seg_custom.yaml"
    assert target.is_file() and "cbsa-dense fit --config seg_custom.yaml" in out
    target.write_text("edited: 1\n")
    line = cli_user_error(["configs", "copy", "seg_custom.yaml"], capsys)
    assert "seg_custom.yaml already exists" in line and "--force" in line, line
    assert target.read_text() == "edited: 1\n"
    _configs(["copy", "seg_custom.yaml", "--force"], capsys)
    assert load_config(target) == load_config(CONFIG_DIR / "seg_custom.yaml")
    folder = tmp_path / "folder"
    folder.mkdir()
    _configs(["copy", "trainer/ddp.yaml", str(folder)], capsys)
    assert (folder / "ddp.yaml").is_file()


def test_copy_flat_writes_the_composed_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _configs(["copy", "demo_seg.yaml", "flat.yaml", "--flat"], capsys)
    loaded = parse_yaml((tmp_path / "flat.yaml").read_text())
    assert BASE_KEY not in loaded and loaded == load_config("demo_seg.yaml")


def test_copy_unknown_name_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = cli_user_error(["configs", "copy", "seg_custm.yaml"], capsys)
    assert "seg_custm.yaml does not exist" in line and "seg_custom.yaml" in line, line
    assert not list(tmp_path.iterdir())


def test_listing_into_a_closed_pipe_stops_quietly():
    """``cbsa-dense configs | head -1``: no BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import sys; from cbsa_dense.cli import main; "
                             "sys.stdout.reconfigure(line_buffering=True); sys.exit(main(['configs']))"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(Path(__file__).parents[1]))
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait()
    assert first and "Traceback" not in err and "BrokenPipeError" not in err, err


def test_dumped_strings_read_back_as_strings():
    """The dumper quotes exactly what jsonargparse's YAML loader would read as another type."""
    values = {"a": "1e-3", "b": "2020-01-01", "c": "yes", "d": "null", "e": "x: y", "f": "plain", "g": 1e-3,
              "h": ["on", "1_000", ".5"]}
    text = dump_config(values)
    assert parse_yaml(text) == values and "f: plain" in text
