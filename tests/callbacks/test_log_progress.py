"""LogProgress: a fit whose stdout is a file gets a plain progress line every ``log_every_n_steps`` steps."""

from __future__ import annotations

import io
import re

import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import RichProgressBar

from cbsa_dense.callbacks import LogProgress
from cbsa_dense.cli import main
from cbsa_dense.cli.lightning_cli import CBSADenseCLI, _wants_log_progress
from tests.conftest import CONFIG_DIR


@pytest.fixture(autouse=True)
def _restore_threads():
    """The demo config sets torch's thread count for its process; keep other tests unaffected."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_fit_to_a_file_prints_a_line_every_log_every_n_steps(tmp_path, capsys):
    """8 steps (2 epochs of 4 batches), log_every_n_steps 3: lines at steps 3, 6 and the last one, 8; one line
    per validation (after each epoch) with its metrics. pytest captures stdout: not a terminal, as ``> log``."""
    args = ["fit", "--config", str(CONFIG_DIR / "demo_seg.yaml"), "--data.init_args.root", str(tmp_path / "ade"),
            "--data.init_args.num_train", "8", "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2",
            "--data.init_args.image_size", "[40, 56]", "--data.init_args.crop_size", "[32, 32]",
            "--data.init_args.scale", "[96, 40]", "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch",
            "1", "--trainer.log_every_n_steps", "3", "--trainer.enable_model_summary", "false",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.default_root_dir", str(tmp_path)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [int(re.match(r"step (\d+)/8 ", line).group(1)) for line in steps] == [3, 6, 8], lines
    for line in steps:
        assert re.search(r"\| epoch [12]/2 \| train_loss \d+\.\d{4} \| lr [\d.e-]+ \| [\d.e-]+ s/step \| "
                         r"elapsed \d+:\d\d:\d\d \| eta \d+:\d\d:\d\d$", line), line
    assert steps[0].startswith("step 3/8 (38%) | epoch 1/2") and steps[-1].startswith("step 8/8 (100%) | epoch 2/2")
    validations = [line for line in lines if line.startswith("validation")]
    assert [re.match(r"validation at step (\d+)/8 \(epoch (\d)/2\): val_miou \d\.\d{4}, ", v).groups()
            for v in validations] == [("4", "1"), ("8", "2")], lines
    assert not any("val_iou_" in v for v in validations)       # the per-class values go to the end-of-fit table
    assert all("val_aacc" in v and "elapsed" in v for v in validations)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_cli_picks_log_progress_only_for_a_file_with_the_bar_on_and_no_bar_configured():
    file, terminal = io.StringIO(), _Terminal()
    assert _wants_log_progress({"callbacks": []}, file)
    assert _wants_log_progress({"enable_progress_bar": None, "callbacks": None}, file)
    assert not _wants_log_progress({"callbacks": []}, terminal)                     # Lightning's bar
    assert not _wants_log_progress({"enable_progress_bar": False}, file)            # no bar at all
    assert not _wants_log_progress({"callbacks": [RichProgressBar()]}, file)        # the config's choice
    assert not _wants_log_progress({"callbacks": LogProgress()}, file)
    # as parsed (before anything is built): class_path namespaces
    rich = Namespace(class_path="lightning.pytorch.callbacks.RichProgressBar", init_args=Namespace())
    monitor = Namespace(class_path="lightning.pytorch.callbacks.LearningRateMonitor", init_args=Namespace())
    assert not _wants_log_progress(Namespace(callbacks=[monitor, rich]), file)
    assert _wants_log_progress(Namespace(callbacks=[monitor], enable_progress_bar=True), file)
    assert not _wants_log_progress({"callbacks": None}, file, defaults=[RichProgressBar()])   # trainer_defaults
    with pytest.raises(ValueError, match="every_n_steps=0"):
        LogProgress(every_n_steps=0)


class _Built(Exception):
    """Carries the built trainer and the parsed config out of the CLI before anything runs."""


class _BuildOnly(CBSADenseCLI):
    def after_instantiate_classes(self) -> None:
        raise _Built(self.trainer, self.config)


def _build(tmp_path, *args):
    argv = ["fit", "--config", str(CONFIG_DIR / "demo_seg.yaml"), "--data.init_args.root", str(tmp_path / "ade"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *args]
    with pytest.raises(_Built) as built:
        _BuildOnly(args=argv)
    return built.value.args


def test_log_progress_joins_the_parsed_trainer_config_and_leaves_the_saved_config_as_given(tmp_path):
    """Added in before_instantiate_classes (stdout is pytest's capture: not a terminal), built with the other
    callbacks, and taken out of the parsed config again: the run's config.yaml does not depend on stdout."""
    trainer, config = _build(tmp_path)
    assert sum(isinstance(c, LogProgress) for c in trainer.callbacks) == 1
    assert trainer.progress_bar_callback is not None and isinstance(trainer.progress_bar_callback, LogProgress)
    saved = config["fit"]["trainer"].get("callbacks") or []
    assert not any("LogProgress" in str(getattr(c, "class_path", "")) for c in saved), saved


def test_no_log_progress_when_the_config_names_a_bar_or_turns_it_off(tmp_path):
    trainer, _ = _build(tmp_path, "--trainer.callbacks+", "RichProgressBar")
    assert not any(isinstance(c, LogProgress) for c in trainer.callbacks)
    assert isinstance(trainer.progress_bar_callback, RichProgressBar)
    trainer, _ = _build(tmp_path, "--trainer.enable_progress_bar", "false")
    assert trainer.progress_bar_callback is None
