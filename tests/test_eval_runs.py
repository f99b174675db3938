"""validate/test/predict write into an evaluation folder, never a new ``version_N`` training run."""

import shutil
import warnings

import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cbsa_dense.cli import main
from cbsa_dense.cli.eval_runs import EVAL_FOLDER_ENV, prepare_eval_run, set_eval_logger_versions
from tests.conftest import ROOT

CONFIG = str(ROOT / "configs" / "demo_seg.yaml")


@pytest.fixture
def run_copy(seg_ckpt, tmp_path):
    """A copy of the session's trained demo run as ``runs/demo_seg/version_0`` (the session run stays clean)."""
    ckpt = tmp_path / "runs" / "demo_seg" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copy(seg_ckpt, ckpt)
    return ckpt


def _cli(subcommand, ckpt, seg_run, tmp_path, *extra, capsys):
    """Run ``cbsa-dense <subcommand>`` with the demo config; return stdout + stderr + warnings + log text."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([subcommand, "--config", CONFIG, "--ckpt_path", str(ckpt),
                     "--data.init_args.root", str(seg_run / "data"), "--data.init_args.num_train", "4",
                     "--data.init_args.num_val", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                     f"--trainer.limit_{'val' if subcommand == 'validate' else subcommand}_batches", "1",
                     *extra]) == 0
    out, err = capsys.readouterr()
    return out + err + "\n".join(str(w.message) for w in caught)


def _versions(tmp_path):
    return sorted(p.name for p in (tmp_path / "runs" / "demo_seg").glob("version_*"))


def test_test_writes_into_the_run_of_its_checkpoint(run_copy, seg_run, tmp_path, capsys):
    text = _cli("test", run_copy, seg_run, tmp_path, capsys=capsys)
    assert _versions(tmp_path) == ["version_0"]                       # no version_1
    (folder,) = (tmp_path / "runs" / "demo_seg" / "version_0" / "eval").glob("test-*")
    assert {"metrics.csv", "config.yaml", "test_per_class_iou.json"} <= {p.name for p in folder.iterdir()}
    assert f"test outputs: {folder}" in text
    assert "dirpath" not in text and "callbacks used to create the checkpoint" not in text
    assert not list(folder.rglob("*.ckpt"))

    text = _cli("test", run_copy, seg_run, tmp_path, "--trainer.logger.init_args.version", "mine", capsys=capsys)
    assert (tmp_path / "runs" / "demo_seg" / "mine" / "test_per_class_iou.json").is_file()   # explicit version wins
    assert _versions(tmp_path) == ["version_0"] and "dirpath" not in text


def test_predict_and_a_checkpoint_from_elsewhere(run_copy, seg_run, tmp_path, capsys):
    elsewhere = tmp_path / "downloads" / "model.ckpt"
    elsewhere.parent.mkdir()
    shutil.copy(run_copy, elsewhere)
    text = _cli("predict", elsewhere, seg_run, tmp_path, capsys=capsys)
    (folder,) = (tmp_path / "runs" / "demo_seg" / "eval").glob("predict-*")   # the config's <save_dir>/<name>/eval
    assert f"predict outputs: {folder}" in text
    assert sorted(p.name for p in (folder / "predictions" / "labels").iterdir())
    assert list((tmp_path / "downloads").iterdir()) == [elsewhere]           # nothing beside a foreign checkpoint
    assert _versions(tmp_path) == ["version_0"]


def _loggers(tmp_path, tensorboard=True) -> Namespace:
    """A parsed trainer config with a CSV logger (and a TensorBoard one)."""
    csv = Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                    init_args=Namespace(save_dir=str(tmp_path / "logs"), name="exp", version=None))
    tb = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                   init_args=Namespace(save_dir=str(tmp_path / "tb"), name="exp", version=None))
    return Namespace(logger=[csv, tb] if tensorboard else csv, default_root_dir=None)


def test_prepare_eval_run_units(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(EVAL_FOLDER_ENV, raising=False)
    ckpt = tmp_path / "logs" / "exp" / "version_3" / "checkpoints" / "a.ckpt"
    ckpt.parent.mkdir(parents=True)
    stored = "TaskCheckpoint{'monitor': 'val_miou', 'mode': 'max'}"            # the training run's callback
    torch.save({"callbacks": {stored: {"best_model_path": "", "dirpath": "x"}, "Other": {"a": 1}}}, ckpt)
    config = _loggers(tmp_path)
    directory = set_eval_logger_versions(config, "validate", ckpt)               # before the loggers are built
    assert directory.parent == ckpt.parent.parent / "eval" and directory.name.startswith("validate-")
    csv = CSVLogger(**vars(config.logger[0].init_args))
    tb = TensorBoardLogger(**vars(config.logger[1].init_args))
    assert csv.version == f"version_3/eval/{directory.name}" and csv.log_dir == str(directory)
    assert tb.log_dir == str(tmp_path / "tb" / "exp" / "eval" / directory.name)
    checkpoint = ModelCheckpoint(monitor="val_miou")
    trainer = Trainer(logger=[csv, tb], callbacks=[checkpoint], enable_progress_bar=False)
    assert prepare_eval_run(trainer, "validate", ckpt) == directory and trainer.log_dir == str(directory)
    assert trainer.checkpoint_callback is None
    keys = [cb.state_key for cb in trainer.callbacks]
    assert stored in keys and checkpoint.state_key not in keys                        # its state is taken
    assert keys.count("Other") == 1          # another training callback's state is taken too (no Lightning warning)
    assert capsys.readouterr().out.strip() == f"validate outputs: {directory}"

    directory.mkdir(parents=True)                                      # same second: a new folder, not a reuse
    second = set_eval_logger_versions(_loggers(tmp_path, tensorboard=False), "validate", ckpt)
    assert second != directory and second.parent == directory.parent

    monkeypatch.setenv("LOCAL_RANK", "1")                              # a DDP rank launched by the first
    monkeypatch.setenv(EVAL_FOLDER_ENV, "validate-20000101-000000")
    assert set_eval_logger_versions(_loggers(tmp_path), "validate", ckpt).name == "validate-20000101-000000"

    given = _loggers(tmp_path, tensorboard=False)                       # a version of the user's is kept
    given.logger.init_args.version = "mine"
    assert set_eval_logger_versions(given, "validate", ckpt) is None and given.logger.init_args.version == "mine"
    unset = Namespace(logger=None, default_root_dir=str(tmp_path / "root"))     # Trainer's default logger
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert set_eval_logger_versions(unset, "test", None).parent == tmp_path / "root" / "lightning_logs" / "eval"
    assert unset.logger.init_args.name == "lightning_logs"


def test_without_the_training_config_the_outputs_still_go_beside_the_run(seg_ckpt, seg_run, tmp_path, capsys):
    """``test --ckpt_path X --data ...`` (no config: Lightning's default logger in the default_root_dir) writes
    into ``<run>/eval/`` when X lies in a training run's ``checkpoints/`` (the run's saved config beside it)."""
    run = tmp_path / "elsewhere" / "my_run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(seg_ckpt, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text("# saved by LightningCLI\n")
    capsys.readouterr()
    assert main(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--data", "DemoSegDataModule",
                 "--data.init_args.root", str(seg_run / "data"), "--data.init_args.num_train", "4",
                 "--data.init_args.num_val", "2", "--trainer.default_root_dir", str(tmp_path / "cwd"),
                 "--trainer.enable_progress_bar", "false", "--trainer.limit_test_batches", "1"]) == 0
    (folder,) = (run / "eval").glob("test-*")
    assert (folder / "test_per_class_iou.json").is_file() and f"test outputs: {folder}" in capsys.readouterr().out
    assert not list((tmp_path / "cwd").rglob("version_*"))
