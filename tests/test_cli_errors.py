"""The error surface of the ``cbsa-dense`` entry point: user errors are one line and exit 2, bugs keep
their traceback, outputs are never destroyed, and a SIGTERM leaves a checkpoint that resumes exactly."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from cbsa_dense.cli import main as cli_main
from cbsa_dense.errors import ConfigError, DataError, user_message
from tests.conftest import ROOT, cli_user_error

DEMO_SEG = str(ROOT / "configs" / "demo_seg.yaml")


def _tiny_seg(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", DEMO_SEG, "--data.init_args.root", str(tmp_path / "data"),
            "--data.init_args.num_train", "8", "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            *extra]


def test_constructor_error_is_one_line_not_a_union_dump(tmp_path, capsys):
    line = cli_user_error(["fit", *_tiny_seg(tmp_path, "--model.init_args.head.init_args.in_index", "3")], capsys)
    assert "CBTDecoder reads encoder output in_index=3 but the encoder has 1 outputs" in line, line
    assert "Union" not in line and not (tmp_path / "data").exists()        # stopped before any work


def test_traceback_flag_and_environment_variable_reraise(tmp_path, monkeypatch):
    argv = ["fit", *_tiny_seg(tmp_path, "--model.init_args.head.init_args.in_index", "3")]
    with pytest.raises(ValueError) as raised:
        cli_main([*argv, "--traceback"])
    assert "in_index=3" in str(raised.value.__cause__ or raised.value)
    monkeypatch.setenv("CBSA_DENSE_TRACEBACK", "1")
    with pytest.raises(ValueError):
        cli_main(argv)


def test_a_bug_keeps_its_traceback(monkeypatch):
    import cbsa_dense.cli.commands.score as score

    def broken(argv):
        raise KeyError("internal bug")

    monkeypatch.setattr(score, "main", broken)
    with pytest.raises(KeyError, match="internal bug"):
        cli_main(["score", "coco"])


class _BadFile(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        raise DataError("image /data/x.jpg is 8000x10 (WxH): too thin for crop_size (64, 64)")


def test_error_from_a_dataloader_worker_keeps_its_type_and_one_line_message():
    with pytest.raises(DataError) as raised:
        next(iter(DataLoader(_BadFile(), num_workers=1)))
    assert "Original Traceback" in str(raised.value)                       # how torch re-raises it
    assert user_message(raised.value) == "image /data/x.jpg is 8000x10 (WxH): too thin for crop_size (64, 64)"


def test_user_message_of_a_plain_error_folds_whitespace():
    assert user_message(ConfigError("a\n  b")) == "a b"


def test_unwritable_output_location_stops_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = cli_user_error(["fit", *_tiny_seg(tmp_path, "--trainer.default_root_dir", str(blocker / "runs"))], capsys)
    assert f"cannot write --trainer.default_root_dir {blocker / 'runs'}" in line
    assert not (tmp_path / "data").exists()


def test_predict_refuses_to_overwrite_predictions(seg_ckpt, seg_run, tmp_path, capsys):
    out = tmp_path / "preds"
    argv = ["predict", "--config", DEMO_SEG, "--ckpt_path", str(seg_ckpt), "--data.init_args.root",
            str(seg_run / "data"), "--data.init_args.num_train", "4", "--data.init_args.num_val", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--model.init_args.predict_dir", str(out)]
    assert cli_main(argv) == 0
    first = {p.name: p.read_bytes() for p in (out / "labels").iterdir()}
    assert len(first) == 2
    (out / "labels" / next(iter(first))).write_bytes(b"my edited file")    # stands for the user's work
    line = cli_user_error(argv, capsys)
    assert f"{out / 'labels'} already holds predictions (2 entries); pass --overwrite" in line
    assert (out / "labels" / next(iter(first))).read_bytes() == b"my edited file"   # nothing destroyed
    assert cli_main([*argv, "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in (out / "labels").iterdir()} == first


def _fit(tmp_path: Path, name: str, *extra: str) -> int:
    return cli_main(["fit", *_tiny_seg(tmp_path, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch",
                                       "2", "--trainer.deterministic", "true",
                                       "--trainer.logger.init_args.save_dir", str(tmp_path / name),
                                       "--trainer.default_root_dir", str(tmp_path / name), *extra)])


def _last_weights(tmp_path: Path, name: str) -> dict:
    checkpoints = [torch.load(p, map_location="cpu", weights_only=False) for p in (tmp_path / name).rglob("last.ckpt")]
    return max(checkpoints, key=lambda c: c["global_step"])["state_dict"]


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(tmp_path, capsys):
    assert _fit(tmp_path, "reference") == 0                              # 4 steps per epoch, 8 in all
    status = _fit(tmp_path, "stopped", "--trainer.callbacks+", "tests.scale.sigterm_callback.TermAtStep",
                  "--trainer.callbacks.step", "5")                         # mid-epoch 1
    assert status == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "received SIGTERM: saved a resumable checkpoint at global step 6" in err
    saved = Path(err.split("resume with --ckpt_path ")[1].split()[0])
    assert torch.load(saved, map_location="cpu", weights_only=False)["global_step"] == 6
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)  # Lightning restored the handler

    assert _fit(tmp_path, "stopped", "--ckpt_path", str(saved)) == 0
    reference, resumed = _last_weights(tmp_path, "reference"), _last_weights(tmp_path, "stopped")
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)


def test_lightning_misconfiguration_is_one_line(tmp_path, capsys):
    line = cli_user_error(["fit", *_tiny_seg(tmp_path, "--trainer.logger", "false")], capsys)
    assert "LearningRateMonitor" in line and line.endswith("(Lightning)")


@pytest.mark.parametrize("flag", ["--model.init_args.num_classes", "--model.num_classes"])
def test_num_classes_on_the_command_line_points_to_the_data(tmp_path, capsys, flag):
    line = cli_user_error(["fit", "--config", str(ROOT / "configs" / "demo_det.yaml"), "--data.init_args.root",
                           str(tmp_path / "data"), flag, "5"], capsys)
    assert f"{flag}: num_classes is set by the data" in line and not (tmp_path / "data").exists()


@pytest.mark.parametrize("flag", ["--optimizer", "--lr_scheduler.class_path"])
def test_top_level_optimizer_is_routed_to_the_task(tmp_path, capsys, flag):
    line = cli_user_error(["fit", *_tiny_seg(tmp_path, flag, "torch.optim.SGD")], capsys)
    option = flag[2:].split(".")[0]
    assert f"use --model.init_args.{option}" in line and "parameter groups" in line


def test_top_level_optimizer_section_in_a_config_names_the_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("_base_: demo_seg.yaml\nlr_scheduler:\n  class_path: WarmupPolyLR\n")
    line = cli_user_error(["fit", "--config", str(config)], capsys)
    assert line.startswith(f"cbsa-dense fit: error: config {config}: --lr_scheduler: a top-level 'lr_scheduler:' "
                           "section is not accepted: move it under model: init_args:"), line
