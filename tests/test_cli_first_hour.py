"""A user's first hour with ``cbsa-dense``: the project's own help and version, the options a user sets at the top
of ``fit --help``, ``info`` on any shipped config, answers that come without importing Lightning, no stub folder
after a failed evaluation, and the printed outputs folder being where the files are."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cbsa_dense
from cbsa_dense.cli import main
from cbsa_dense.cli.entry import EXTRA_COMMANDS, QUICK_HELP, TRAINING_COMMANDS
from tests.conftest import ROOT


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(argv))
        except SystemExit as stop:                   # LightningCLI's own help exits
            status = stop.code or 0
    return status, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------ help and version
def test_help_names_the_project_its_version_and_every_subcommand():
    status, out, _ = _run("--help")
    assert status == 0
    first = out.splitlines()[0]
    assert first.startswith(f"cbsa-dense {cbsa_dense.__version__}") and "CBSA" in first
    assert "Lightning Trainer command line tool" not in out
    described = {**TRAINING_COMMANDS, **{name: help_ for name, (_, help_) in EXTRA_COMMANDS.items()}}
    assert set(described) >= {"fit", "validate", "test", "predict", "score", "info", "benchmark", "export",
                              "explain", "configs", "linearize"}
    for name, help_ in described.items():
        assert f"  {name:<10} {help_}" in out.splitlines(), name           # the whole description, one line
    assert _run("-h")[1] == out and _run()[1] == out


def test_version():
    status, out, _ = _run("--version")
    assert status == 0 and out.splitlines()[0] == f"cbsa-dense {cbsa_dense.__version__}"
    assert "torch" in out and "lightning" in out


def test_unknown_subcommand_is_one_line():
    status, _, err = _run("fitt")
    assert status == 2 and err.strip() == ("cbsa-dense: error: unknown subcommand 'fitt' (did you mean 'fit'?); "
                                           "`cbsa-dense --help` lists them")


@pytest.mark.parametrize("subcommand", ["fit", "predict"])
def test_subcommand_help_starts_with_the_options_a_user_sets(subcommand):
    status, out, _ = _run(subcommand, "--help")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"usage: cbsa-dense {subcommand} [--config CONFIG]") and len(lines[0]) < 100
    block = "\n".join(lines[2:2 + len(QUICK_HELP[subcommand].splitlines())])
    assert block == QUICK_HELP[subcommand]                                # as written, not reflowed
    assert out.index(QUICK_HELP[subcommand]) < out.index("\noptions:")
    if subcommand == "fit":
        for option in ("--config", "cbsa-dense configs", "--data.init_args.root",
                       "--model.init_args.encoder.init_args.pretrained", "--model.init_args.weights",
                       "--trainer.max_steps", "--trainer.devices", "trainer/ddp.yaml", "--trainer.default_root_dir",
                       "--trainer.logger.init_args.save_dir", "--model.init_args.evaluation.",
                       "predict --ckpt_path m.ckpt --images photos/"):
            assert option in block, option
        assert "--trainer.max_steps MAX_STEPS" in out and "--trainer.gradient_clip_val" in out   # the full list
    else:
        assert "--images" in block and "--model.init_args.predict_dir" in block


def test_task_help_does_not_mark_num_classes_required():
    """The CLI links num_classes from the data; the task's help says so instead of asking for it."""
    status, out, _ = _run("fit", "--model.help", "SegmentationTask")
    assert status == 0
    assert "[--model.num_classes NUM_CLASSES]" in " ".join(out.split())          # optional in the usage
    entry = out[out.index("  --model.num_classes"):]
    entry = entry[:entry.index("\n  --", 1)]
    assert "required" not in entry and "default: null" in " ".join(entry.split())
    status, out, _ = _run("fit", "--model.help", "DetectionTask")
    assert status == 0 and "[--model.num_classes NUM_CLASSES]" in " ".join(out.split())


def test_a_task_built_without_num_classes_says_so():
    from cbsa_dense.errors import ConfigError
    from cbsa_dense.models.encoders import ViTEncoder
    from cbsa_dense.models.heads import LinearHead
    from cbsa_dense.tasks import SegmentationTask

    encoder = ViTEncoder(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(ConfigError, match="SegmentationTask needs num_classes"):
        SegmentationTask(encoder, LinearHead)


# ------------------------------------------------------------------------------------------------------ info
def test_info_of_a_config_whose_data_is_not_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                      # finetune_cpu.yaml's root my_data: absent
    status, out, err = _run("info", "--config", "finetune_cpu.yaml")
    assert status == 0, err
    assert "150 classes (assumed:" in out and "--num-classes N sets it" in out
    assert "GFLOPs train 168x168" in out and "GFLOPs eval 252x448" in out      # crop; evaluation scale (448, 252)
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["encoder"], ["head"],
                                                                                                ["total"])}
    assert set(rows) == {"encoder", "head", "total"}
    assert int(rows["total"][1].replace(",", "")) == sum(int(rows[p][1].replace(",", "")) for p in ("encoder", "head"))
    assert float(rows["total"][3]) > 7 * float(rows["total"][2])              # 8 windows of 168x168
    assert not out.startswith("{")                                            # a table, not raw JSON

    status, out, _ = _run("info", "--config", "finetune_cpu.yaml", "--json")
    result = json.loads(out)
    assert status == 0 and result["image_size"] == [168, 168] and result["num_classes"] == 150
    assert result["evaluation"]["image_size"] == [252, 448] and result["evaluation"]["passes"] == [[[168, 168], 8]]
    assert result["evaluation"]["gflops"] > 7 * result["gflops"]
    assert result["params"] == result["encoder_params"] + result["head_params"]


def test_info_takes_data_and_model_overrides(tmp_path):
    data = tmp_path / "my_data"
    data.mkdir()
    (data / "classes.txt").write_text("sky\nroad\ncar\n")
    status, out, err = _run("info", "--config", "finetune_cpu.yaml", "--json", "--data.init_args.root", str(data),
                            "--data.init_args.crop_size", "[224, 224]", "--model.init_args.evaluation.scale",
                            "[896, 504]", "--model.init_args.encoder.init_args.pretrained", "no_such_weights.pth")
    assert status == 0, err
    result = json.loads(out)
    assert result["num_classes"] == 3 and "SegFolderDataModule" in result["num_classes_from"]
    assert result["image_size"] == [224, 224] and result["evaluation"]["image_size"] == [504, 896]
    assert _run("info", "--config", "finetune_cpu.yaml", "--num-classes", "7", "--json")[1].count('"num_classes": 7')
    status, _, err = _run("info", "--config", "finetune_cpu.yaml", "--trainer.max_steps", "3")
    assert status == 2 and "unrecognized arguments: --trainer.max_steps" in err


def test_info_composes_several_configs_as_fit_does(tmp_path):
    """A second --config goes on top of the first (info took only the last one, which has no whole model)."""
    arm = tmp_path / "arm.yaml"
    arm.write_text("model:\n  init_args:\n    head:\n      class_path: CBTDecoder\n      init_args: {n_layers: 1}\n")
    status, out, err = _run("info", "--config", "finetune_cpu.yaml", "--config", str(arm), "--num-classes", "3")
    assert status == 0, err
    assert out.startswith(f"finetune_cpu.yaml + {arm}: SegmentationTask (ViTEncoder + CBTDecoder)"), out
    assert "GFLOPs train 168x168" in out                                   # the first file's data is kept
    assert "(ViTEncoder + LinearHead)" in _run("info", "--config", "finetune_cpu.yaml", "--num-classes", "3")[1]


def test_info_of_a_detection_config_and_a_sliding_window_protocol():
    status, out, err = _run("info", "--config", "demo_det.yaml", "--json")
    assert status == 0, err
    result = json.loads(out)
    assert result["num_classes"] == 3 and result["image_size"] == [128, 128]
    assert result["neck_params"] > 0 and result["head_gflops"] > 0 and result["evaluation"]["image_size"] == [128, 128]
    status, out, _ = _run("info", "--config", "paper/ade20k_cbt_tiny.yaml", "--json")
    result = json.loads(out)
    assert status == 0 and result["evaluation"]["passes"] == [[[512, 512], 4]]       # (2048, 512): 4 windows
    assert result["evaluation"]["gflops"] == pytest.approx(4 * result["gflops"])


# ---------------------------------------------------------------------------- answers without Lightning
_PROBE = """
import contextlib, io, sys
from cbsa_dense.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    status = main(sys.argv[1:])
heavy = sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'timm', 'torch'})
print(status, ' '.join(heavy))
"""


@pytest.mark.parametrize("argv, status", [(["--help"], 0), (["--version"], 0), (["configs"], 0),
                                          (["fit", "--config", "nope.yaml"], 2),
                                          (["predict", "--ckpt_path", "nope.ckpt", "--images", "x"], 2)])
def test_answers_that_do_not_import_lightning(argv, status, tmp_path):
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(status)], out.stdout                    # nothing heavy imported


def _fresh_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` run by a new interpreter that sees this checkout (and nothing imported by the tests)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out


def test_load_of_a_missing_file_imports_nothing_heavy(tmp_path):
    probe = ("import sys, cbsa_dense\n"
             "try:\n    cbsa_dense.load('missing.ckpt')\n"
             "except FileNotFoundError as error:\n    print(type(error).__name__, '|', error)\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'timm', 'torch'}))")
    out = _fresh_python(probe, tmp_path)
    assert out.stdout.splitlines() == ["CheckpointNotFoundError | checkpoint file missing.ckpt does not exist: check "
                                       "the path", "[]"]
    from cbsa_dense.errors import CheckpointError

    (tmp_path / "empty.ckpt").touch()
    with pytest.raises(CheckpointError, match="is empty"):
        cbsa_dense.load(tmp_path / "empty.ckpt")


def test_the_missing_file_error_is_one_class_for_load_and_the_cli():
    """``cbsa_dense.load`` checks the file with the standard library and ``read_checkpoint`` after it: one
    :class:`CheckpointNotFoundError` (a ``FileNotFoundError`` too) for both, so one ``except`` catches either."""
    from cbsa_dense.errors import CheckpointNotFoundError
    from cbsa_dense.models.checkpoint import read_checkpoint

    assert cbsa_dense.CheckpointNotFoundError is CheckpointNotFoundError
    with pytest.raises(CheckpointNotFoundError, match="missing.ckpt does not exist"):
        read_checkpoint("missing.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt does not exist"):
        cbsa_dense.load("missing.ckpt")


def test_a_segmentation_model_imports_no_detection_code(tmp_path):
    """The segmentation task (what ``cbsa_dense.load`` of a segmentation checkpoint imports) pulls in neither
    the detector, its heads, the COCO datamodule nor pycocotools; the package's names still resolve on use."""
    probe = ("import sys\n"
             "from cbsa_dense.tasks import SegmentationTask\n"
             "from cbsa_dense.data.loaders import distributed_world\n"
             "print(sorted(m for m in sys.modules if m in ('cbsa_dense.models.detector', 'cbsa_dense.data.coco_datamodule',"
             " 'cbsa_dense.models.heads.det_common', 'pycocotools', 'faster_coco_eval')))\n"
             "from cbsa_dense.data import COCODetectionDataModule\n"
             "from cbsa_dense.models.heads import FCOSHead\n"
             "import cbsa_dense.models as models\n"
             "print(COCODetectionDataModule.__module__, FCOSHead.__module__, models.necks.__name__)\n")
    out = _fresh_python(probe, tmp_path)
    assert out.stdout.splitlines() == ["[]", "cbsa_dense.data.coco_datamodule cbsa_dense.models.heads.det_fcos "
                                             "cbsa_dense.models.necks"]
    import cbsa_dense.data

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchDataModule'"):
        cbsa_dense.data.NoSuchDataModule  # noqa: B018
    assert "SegFolderDataModule" in dir(cbsa_dense.data)


def test_the_few_workers_hint_of_lightning_is_quiet_under_the_cli(monkeypatch):
    """On a machine with more CPUs than these, Lightning warns about the 0 or 1 workers that the demo and CPU
    fine-tuning configs set on purpose; the CLI filters exactly that message (checked against Lightning's own
    check, so a rewording there fails here)."""
    import warnings

    from lightning.pytorch.trainer.connectors import data_connector
    from torch.utils.data import DataLoader

    from cbsa_dense.cli.entry import _quiet_known_noise

    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda devices: 7)
    loader, trainer = DataLoader(list(range(4)), num_workers=0), type("T", (), {"num_devices": 1})()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        data_connector._worker_check(trainer, loader, "train_dataloader")
        assert [str(w.message) for w in seen if "does not have many workers" in str(w.message)], "Lightning changed"
        seen.clear()
        _quiet_known_noise()
        data_connector._worker_check(trainer, loader, "train_dataloader")
    assert not [str(w.message) for w in seen], [str(w.message) for w in seen]


# ---------------------------------------------------------------------------------------- evaluation folders
def _photos(ckpt: Path, count: int) -> list[Path]:
    data = next(parent / "data" for parent in ckpt.parents if (parent / "data").is_dir())
    found = sorted(p for p in data.rglob("*") if p.suffix in (".jpg", ".png") and p.parent.name.startswith("val"))
    return found[:count]


def test_a_failed_predict_leaves_no_folder_it_created(seg_ckpt, tmp_path, monkeypatch):
    shutil.copy(seg_ckpt, tmp_path / "m.ckpt")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg" * 50)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    status, out, err = _run("predict", "--ckpt_path", "m.ckpt", "--images", "photos/",
                            "--trainer.enable_progress_bar", "false")
    assert status == 2 and "broken.jpg" in err
    assert "predict outputs: " in out                                       # the folder had been planned
    assert sorted(p.name for p in tmp_path.iterdir()) == before             # no lightning_logs/eval/predict-*

    status, _, err = _run("predict", "--ckpt_path", "m.ckpt", "--images", "photos/", "--model.init_args.predict_dir",
                          "new/preds", "--trainer.enable_progress_bar", "false")
    assert status == 2 and sorted(p.name for p in tmp_path.iterdir()) == before    # nor the predict_dir made


def test_predict_prints_where_its_outputs_are(seg_ckpt, tmp_path, monkeypatch):
    shutil.copy(seg_ckpt, tmp_path / "m.ckpt")
    (tmp_path / "photos").mkdir()
    images = _photos(seg_ckpt, 1)
    for image in images:
        shutil.copy(image, tmp_path / "photos" / image.name)
    monkeypatch.chdir(tmp_path)
    status, out, err = _run("predict", "--ckpt_path", "m.ckpt", "--images", "photos/", "--model.init_args.predict_dir",
                            "mine", "--trainer.enable_progress_bar", "false")
    assert status == 0, err
    lines = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("predict ")}
    outputs = Path(lines["predict outputs"])
    assert outputs == Path("mine")
    assert sorted(p.name for p in (outputs / "labels").iterdir()) == [f"{image.stem}.png" for image in images]
    assert sorted(p.name for p in (outputs / "overlays").iterdir()) == [f"{image.stem}.png" for image in images]
    logs = Path(lines["predict config and logs"])                           # the run's own files, elsewhere
    assert logs.parent.name == "eval" and (logs / "config.yaml").is_file() and not (logs / "predictions").exists()


def test_detection_prints_its_results_dir(det_ckpt, tmp_path, monkeypatch):
    shutil.copy(det_ckpt, tmp_path / "d.ckpt")
    (tmp_path / "photos").mkdir()
    for image in _photos(det_ckpt, 1):
        shutil.copy(image, tmp_path / "photos" / image.name)
    monkeypatch.chdir(tmp_path)
    status, out, err = _run("predict", "--ckpt_path", "d.ckpt", "--images", "photos/", "--model.init_args.results_dir",
                            "found", "--trainer.enable_progress_bar", "false")
    assert status == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("predict outputs: ")]
    outputs = Path(line.split(": ", 1)[1])
    assert outputs == Path("found") and (outputs / "predictions.json").is_file()
