"""LogProgress: a fit whose stdout is a file gets a plain progress line every ``log_every_n_steps`` steps."""

from __future__ import annotations

import io
import re

import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar

from cbsa_dense.callbacks import LogProgress
from cbsa_dense.cli import main
from cbsa_dense.cli.lightning_cli import _wants_log_progress
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
    assert [re.match(r"validation at step (\d+) \(epoch (\d)\): val_miou \d\.\d{4}, ", v).groups()
            for v in validations] == [("4", "1"), ("8", "2")], lines
    assert all("val_aacc" in v and "elapsed" in v for v in validations)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_cli_picks_log_progress_only_for_a_file_with_the_bar_on_and_no_bar_configured():
    file, terminal = io.StringIO(), _Terminal()
    assert _wants_log_progress({"callbacks": []}, [], file)
    assert _wants_log_progress({"enable_progress_bar": None, "callbacks": None}, [], file)
    assert not _wants_log_progress({"callbacks": []}, [], terminal)                     # Lightning's bar
    assert not _wants_log_progress({"enable_progress_bar": False}, [], file)            # no bar at all
    assert not _wants_log_progress({"callbacks": [RichProgressBar()]}, [], file)        # the config's choice
    assert not _wants_log_progress({"callbacks": LogProgress()}, [], file)
    with pytest.raises(ValueError, match="every_n_steps=0"):
        LogProgress(every_n_steps=0)
