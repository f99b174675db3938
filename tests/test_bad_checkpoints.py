"""Bad checkpoint and weight files stop the real CLI with one line (issue #10 part 6).

Each bad file (truncated, not a checkpoint, a directory, missing) is tried at every place a checkpoint is
read: ``fit --ckpt_path``, ``test --ckpt_path`` with and without ``--config``, and
``--model.init_args.weights``; a checkpoint of the other task (segmentation vs detection) too.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from cbsa_dense.errors import CheckpointError
from cbsa_dense.models.checkpoint import read_checkpoint
from tests.conftest import ROOT, cli_user_error

SEG_CONFIG = str(ROOT / "configs" / "demo_seg.yaml")
DET_CONFIG = str(ROOT / "configs" / "demo_det.yaml")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_ckpt")


def _seg_args(work: Path) -> list[str]:
    return ["--data.init_args.root", str(work / "seg_data"), "--data.init_args.num_train", "4",
            "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2", "--trainer.max_epochs", "1",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(work / "runs")]


def _det_args(work: Path) -> list[str]:
    return ["--data.init_args.root", str(work / "det_data"), "--data.init_args.num_train", "4",
            "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(work / "runs")]


def _entry(kind: str, path: Path, work: Path) -> list[str]:
    """The command line that reads ``path`` at one of the places checkpoints are read."""
    if kind == "fit --ckpt_path":
        return ["fit", "--config", SEG_CONFIG, *_seg_args(work), "--ckpt_path", str(path)]
    if kind == "test --ckpt_path --config":
        return ["test", "--config", SEG_CONFIG, *_seg_args(work), "--ckpt_path", str(path)]
    if kind == "test --ckpt_path":
        return ["test", "--ckpt_path", str(path), "--data", "cbsa_dense.data.demo_seg.DemoSegDataModule",
                "--data.root", str(work / "seg_data"), "--data.num_train", "4", "--data.num_val", "2",
                "--trainer.logger", "false", "--trainer.default_root_dir", str(work / "runs")]
    assert kind == "--model.init_args.weights"
    return ["fit", "--config", SEG_CONFIG, *_seg_args(work), "--model.init_args.weights", str(path)]


ENTRIES = ["fit --ckpt_path", "test --ckpt_path --config", "test --ckpt_path", "--model.init_args.weights"]


def _bad_file(name: str, seg_ckpt: Path, work: Path) -> tuple[Path, str]:
    """A bad file and the pattern its error line must match."""
    bad = work / "bad"
    bad.mkdir(exist_ok=True)
    if name == "truncated":
        path = bad / "truncated.ckpt"
        data = seg_ckpt.read_bytes()
        path.write_bytes(data[: len(data) // 2])             # a copy interrupted half way
        return path, rf"{path} is truncated \({len(data) // 2} bytes, the end of the archive is missing\)"
    if name == "not a checkpoint":
        path = bad / "notes.ckpt"
        path.write_text("epoch 3: val_miou 0.71\n")
        return path, rf"{path} is not a PyTorch checkpoint \(it starts with b'epoc'"
    if name == "directory":
        path = bad / "run_dir"
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        shutil.copy(seg_ckpt, path / "checkpoints" / "last.ckpt")
        return path, rf"{path} is a directory, not a (checkpoint|weights) file: give the file itself \(e\.g\. " \
                     rf"{path}/checkpoints/last\.ckpt\)"
    assert name == "missing"
    path = bad / "nope.ckpt"
    return path, rf"(checkpoint|weights) file {path} does not exist: check the path"


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("bad", ["truncated", "not a checkpoint", "directory", "missing"])
def test_bad_file_is_one_line(entry, bad, seg_ckpt, work, capsys):
    path, pattern = _bad_file(bad, seg_ckpt, work)
    line = cli_user_error(_entry(entry, path, work), capsys)
    assert line.startswith(f"cbsa-dense {'test' if entry.startswith('test') else 'fit'}: error: ")
    assert re.search(pattern, line), line


@pytest.mark.parametrize("entry", ["fit --ckpt_path", "test --ckpt_path --config", "--model.init_args.weights"])
def test_detection_checkpoint_with_segmentation_config(entry, det_ckpt, work, capsys):
    line = cli_user_error(_entry(entry, det_ckpt, work), capsys)
    assert (f"the checkpoint {det_ckpt} holds a DetectionTask (hyper_parameters _class_path "
            f"cbsa_dense.tasks.DetectionTask), the config builds SegmentationTask: ") in line, line
    if entry == "--model.init_args.weights":
        assert "or set --model.init_args.weights_strict false to load only the tensors that fit" in line
    elif entry == "fit --ckpt_path":
        assert "resume from a checkpoint of a SegmentationTask run, or use the config that checkpoint" in line
    else:
        assert "give a checkpoint of a SegmentationTask run, or leave out --config/--model (test then" in line


def test_segmentation_checkpoint_with_detection_config(seg_ckpt, work, capsys):
    line = cli_user_error(["test", "--config", DET_CONFIG, *_det_args(work), "--ckpt_path", str(seg_ckpt)], capsys)
    assert (f"the checkpoint {seg_ckpt} holds a SegmentationTask (hyper_parameters _class_path "
            f"cbsa_dense.tasks.SegmentationTask), the config builds DetectionTask") in line, line


def test_the_task_hook_checks_the_class_before_lightnings_strict_load(seg_ckpt, det_ckpt):
    """Outside the CLI (a plain Trainer), ``on_load_checkpoint`` refuses another task's checkpoint."""
    from cbsa_dense.tasks.loading import load_task

    det_task = load_task(det_ckpt)
    seg_checkpoint = read_checkpoint(seg_ckpt)
    with pytest.raises(CheckpointError, match=r"holds a SegmentationTask .* the config builds DetectionTask"):
        det_task.on_load_checkpoint(seg_checkpoint)
    det_task.on_load_checkpoint(read_checkpoint(det_ckpt))             # its own class passes


def test_read_checkpoint_reads_our_checkpoints_weights_only(seg_ckpt):
    checkpoint = read_checkpoint(seg_ckpt)
    assert checkpoint["hyper_parameters"]["_class_path"] == "cbsa_dense.tasks.SegmentationTask"
    assert all(isinstance(v, torch.Tensor) for v in checkpoint["state_dict"].values())


def test_non_dict_and_foreign_object_files(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth holds a list, not a checkpoint"):
        read_checkpoint(tmp_path / "list.pth")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.ckpt is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.ckpt")
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match=r"w\.safetensors .* as safetensors, it is truncated"):
        read_checkpoint(tmp_path / "w.safetensors")
