"""The evaluation protocol is a task argument replayed from the checkpoint, field by field, with the precedence
command line > ``--config`` > checkpoint. The checkpoint (``seg_ckpt``, demo_seg.yaml) stores ``scale: null``,
``window: [96, 96]``, ``stride: [64, 64]``; each run prints the protocol it uses on one stderr line."""

from __future__ import annotations

import pytest

from cbsa_dense.cli import main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


@pytest.fixture
def run_test(seg_run, seg_ckpt, tmp_path, capsys):
    """``cbsa-dense test --ckpt_path <seg_ckpt> --data DemoSegDataModule ... EXTRA``; returns its protocol line."""

    def run(*extra: str) -> str:
        capsys.readouterr()
        status = main(["test", "--ckpt_path", str(seg_ckpt), "--data", "DemoSegDataModule",
                       "--data.init_args.root", str(seg_run / "data"), "--data.init_args.num_train", "4",
                       "--data.init_args.num_val", "2", *QUIET, "--trainer.default_root_dir", str(tmp_path / "runs"),
                       *extra])
        err = capsys.readouterr().err
        assert status == 0, err
        lines = [line for line in err.splitlines() if line.startswith("evaluation protocol")]
        assert len(lines) == 1, err
        return lines[0]

    return run


def config_file(tmp_path, name: str, evaluation: str) -> str:
    path = tmp_path / name
    path.write_text(f"model:\n  init_args:\n    evaluation: {evaluation}\n")
    return str(path)


def test_the_stored_protocol_is_used_and_said_to_be(run_test, seg_ckpt):
    line = run_test()
    assert f"stored in {seg_ckpt}" in line, line
    assert line.endswith(": original size; sliding window 96x96, stride 64x64, scales [1.0], no flip"), line


def test_a_config_overrides_the_fields_it_sets_and_keeps_the_stored_rest(run_test, tmp_path):
    config = config_file(tmp_path, "window.yaml", "{window: [80, 80]}")
    line = run_test("--config", config)
    assert line.endswith(": original size; sliding window 80x80, stride 64x64, scales [1.0], no flip"), line


def test_the_command_line_overrides_the_config(run_test, tmp_path):
    config = config_file(tmp_path, "window.yaml", "{window: [80, 80], flip: true}")
    line = run_test("--config", config, "--model.init_args.evaluation.window", "[72, 72]")
    assert line.endswith(": original size; sliding window 72x72, stride 64x64, scales [1.0], with flip"), line


def test_the_command_line_overrides_the_checkpoint_field_by_field(run_test):
    line = run_test("--model.init_args.evaluation.scale", "[64, 48]", "--model.init_args.evaluation.stride",
                    "[48, 48]")
    assert line.endswith(": resize to (long, short) [64, 48], keep ratio; sliding window 96x96, stride 48x48, "
                         "scales [1.0], no flip"), line
