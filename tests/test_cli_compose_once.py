"""Each command composes its configs (``compose_config_args``) once, and reads ``--ckpt_path`` (``prepare_args``)
once: the entry point does both and hands the result to ``CBSADenseCLI``, which does not do them again."""

from __future__ import annotations

import contextlib
import io

import pytest
import yaml

from cbsa_dense.cli import config_files, lightning_cli, main, stored_run
from cbsa_dense.cli.commands.benchmark import parse_train_config
from tests.conftest import CONFIG_DIR


@pytest.fixture
def calls(monkeypatch):
    """Counts of compose_config_args and prepare_args calls, wherever the CLI modules call them from."""
    counts = {"compose_config_args": 0, "prepare_args": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapper

    for name, home in (("compose_config_args", config_files), ("prepare_args", stored_run)):
        wrapper = counting(name, getattr(home, name))
        monkeypatch.setattr(home, name, wrapper)
        monkeypatch.setattr(lightning_cli, name, wrapper)
    return counts


def test_fit_composes_once(calls):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["fit", "--config", "demo_seg.yaml", "--print_config"])
    assert "class_path" in out.getvalue()
    assert calls == {"compose_config_args": 1, "prepare_args": 1}


def test_help_composes_once(calls):
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
        main(["fit", "--config", "demo_seg.yaml", "--help"])
    assert calls["compose_config_args"] == 1


def test_benchmark_train_composes_once(calls, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "logger": False},
        "model": {"class_path": "tests.benchmark.tiny_train.TinyTask", "init_args": {"width": 4}},
        "data": {"class_path": "tests.benchmark.tiny_train.TinyData", "init_args": {"num_images": 4}}}))
    model, datamodule, trainer = parse_train_config(str(config), ["--data.init_args.batch_size", "2"])
    assert datamodule.hparams.batch_size == 2 and trainer["accelerator"] == "cpu"
    assert calls == {"compose_config_args": 1, "prepare_args": 1}


def test_the_cli_built_directly_composes_once(calls, tmp_path):
    cli = lightning_cli.CBSADenseCLI(args=["--config", str(CONFIG_DIR / "demo_seg.yaml"),
                                           "--data.init_args.root", str(tmp_path)], run=False)
    assert cli.model is not None
    assert calls == {"compose_config_args": 1, "prepare_args": 1}
