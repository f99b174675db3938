"""``null`` on the command line is None for every optional argument, however deep (``read_nested_null_as_yaml``).

jsonargparse 4.53 handed a value two or more subclass levels deep to the inner parser as ``f"--{key}={value}"``
after reading it as YAML: ``--model.init_args.encoder.init_args.pretrained null`` reached the encoder as the
string ``'None'`` (which it then tried to open), and an ``int | None`` argument there failed to parse.
"""

from __future__ import annotations

import pytest
from jsonargparse import ArgumentParser

from cbsa_dense.cli.lightning_cli import CBSADenseCLI
from cbsa_dense.cli.null_patch import read_nested_null_as_yaml
from cbsa_dense.errors import UserError
from tests.conftest import CONFIG_DIR


class _Parsed(Exception):
    """Carries the parsed config out of the CLI before anything is built."""


class _ParseOnly(CBSADenseCLI):
    def before_instantiate_classes(self) -> None:
        raise _Parsed(self.config)


def parsed(args: list[str]):
    """The ``fit`` section of what ``cbsa-dense fit <args>`` parses (nothing instantiated, nothing read)."""
    with pytest.raises(_Parsed) as stop:
        _ParseOnly(args=["fit", *args])
    return stop.value.args[0]["fit"]


SEG, SEG_FINETUNE, DET, DET_COCO = (str(CONFIG_DIR / n) for n in ("demo_seg.yaml", "finetune_cpu.yaml",
                                                                     "demo_det.yaml", "det_coco.yaml"))
#: (config, key set to null on the command line): plain and subclass keys, one, two and three init_args deep.
NULL_KEYS = [
    (SEG_FINETUNE, "model.init_args.encoder.init_args.pretrained"),   # the user's command
    (SEG_FINETUNE, "model.init_args.encoder.init_args.arch"),         # str | None set by the config
    (SEG, "model.init_args.encoder.init_args.depth"),                 # int | None: failed instead
    (SEG, "model.init_args.encoder.init_args.attn_layer.init_args.head_dim"),   # three levels
    (SEG, "model.init_args.head.init_args.embed_dim"),
    (SEG, "model.init_args.optimizer.init_args.foreach"),
    (SEG, "model.init_args.weights"),
    (SEG, "model.init_args.predict_dir"),
    (SEG, "data.init_args.predict_images"),
    (SEG_FINETUNE, "data.init_args.root"),
    (SEG_FINETUNE, "data.init_args.test_images"),
    (SEG, "trainer.default_root_dir"),
    (SEG, "trainer.logger.init_args.version"),
    (DET_COCO, "model.init_args.encoder.init_args.pretrained"),
    (DET, "model.init_args.encoder.init_args.norm_eps"),
    (DET, "model.init_args.neck.init_args.strides"),
    (DET, "model.init_args.weights"),
    (DET, "model.init_args.results_dir"),
    (DET_COCO, "data.init_args.root"),
    (DET_COCO, "data.init_args.test_json"),
    (DET_COCO, "data.init_args.predict_images"),
    (DET, "trainer.max_time"),
]


@pytest.mark.parametrize(("config", "key"), NULL_KEYS, ids=[f"{c.rsplit('/', 1)[1]}:{k}" for c, k in NULL_KEYS])
def test_null_on_the_command_line_is_none(config, key):
    assert parsed(["--config", config, f"--{key}", "null"]).get(key) is None


def test_null_in_an_appended_callback_is_none():
    args = ["--config", DET, "--trainer.callbacks+", "TaskCheckpoint", "--trainer.callbacks.init_args.dirpath", "null"]
    assert parsed(args).trainer.callbacks[-1].init_args.dirpath is None


def test_other_nested_values_parse_as_before():
    args = ["--config", SEG, "--model.init_args.encoder.init_args.pretrained", "w.safetensors",
            "--model.init_args.encoder.init_args.depth", "2",
            "--model.init_args.encoder.init_args.attn_layer.init_args.grid", "[2, 3]",
            "--model.init_args.encoder.init_args.arch", "None"]      # a string, as YAML reads it
    encoder = parsed(args).model.init_args.encoder.init_args
    assert (encoder.pretrained, encoder.depth, tuple(encoder.attn_layer.init_args.grid), encoder.arch) == \
        ("w.safetensors", 2, (2, 3), "None")


class _Inner:
    def __init__(self, path: str | None = "x", sizes: list[int | None] | None = None) -> None:
        pass


class _Middle:
    def __init__(self, inner: _Inner, count: int | None = 1) -> None:
        pass


class _Outer:
    def __init__(self, middle: _Middle) -> None:
        pass


def test_the_fix_is_in_jsonargparse_value_handling_not_per_argument():
    """A plain jsonargparse parser (no cbsa_dense class): nulls two and three levels deep, alone and in a list."""
    read_nested_null_as_yaml()
    read_nested_null_as_yaml()                                      # idempotent
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(_Outer, "outer")
    base = [f"--outer={__name__}._Outer", f"--outer.init_args.middle={__name__}._Middle",
            f"--outer.init_args.middle.init_args.inner={__name__}._Inner"]
    cfg = parser.parse_args([*base, "--outer.init_args.middle.init_args.count", "null",
                             "--outer.init_args.middle.init_args.inner.init_args.path", "null",
                             "--outer.init_args.middle.init_args.inner.init_args.sizes", "[4, null]"])
    middle = cfg.outer.init_args.middle.init_args
    assert middle.count is None and middle.inner.init_args.path is None
    assert middle.inner.init_args.sizes == [4, None]


def _lookalike(value, serialize, instantiate_classes, sub_add_kwargs, prev_val=None, partial_skip_args=None,
               typehint=None):
    """Same name and signature as jsonargparse 4.53's, but not its code."""
    return value


_lookalike.__module__, _lookalike.__qualname__ = "jsonargparse._typehints", "adapt_class_type"


def _other_order(serialize, value):
    return value


_other_order.__module__, _other_order.__qualname__ = "jsonargparse._typehints", "adapt_class_type"


@pytest.mark.parametrize(("stand_in", "reason"), [
    (_lookalike, "no longer hands a nested value on"),      # a release that changed the function's body
    (_other_order, "takes (serialize, value)"),              # ... its signature
    (lambda value, *args: value, "is tests.test_cli_null.<lambda>"),   # another function altogether
    (None, "has no adapt_class_type"),                       # ... or removed it
])
def test_a_different_jsonargparse_function_is_refused(monkeypatch, stand_in, reason):
    """The patch wraps only the function it was written for; any other is refused, in one line that names the
    installed jsonargparse version, and is left as it is."""
    import jsonargparse
    from jsonargparse import _typehints

    monkeypatch.setattr(_typehints, "adapt_class_type", stand_in, raising=False)
    with pytest.raises(UserError) as refused:
        read_nested_null_as_yaml()
    message = str(refused.value)
    assert f"jsonargparse {jsonargparse.__version__} is not supported" in message and reason in message, message
    assert "\n" not in message
    assert _typehints.adapt_class_type is stand_in


def test_the_refusal_is_one_line_of_the_command(monkeypatch, capsys):
    from jsonargparse import _typehints

    from cbsa_dense.cli import main

    monkeypatch.setattr(_typehints, "adapt_class_type", _lookalike)
    assert main(["fit", "--config", SEG, "--print_config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cbsa-dense fit: error: jsonargparse ") and "is not supported" in err[-1], err
