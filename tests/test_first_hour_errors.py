"""Errors a new user meets in the first hour point the right way (issue #23 part 5).

Each message names the file or setting and the value, says what is wrong as it is (a file given where a folder
was expected is accepted or called a file, a missing file "does not exist", random bytes are "not a PyTorch
checkpoint"), and what to do; a missing optional dependency names the extra that installs it.
"""

from __future__ import annotations

import ast
import pickle
import re
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cbsa_dense.errors import CheckpointError, DataError, OutputError
from tests.conftest import ROOT, cli_user_error
from tests.test_bad_images import cli_args, make_dataset


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _predict_args(root: Path, tmp_path: Path, images: str) -> list[str]:
    """A tiny seg_custom predict (random weights) on ``images``, written under ``tmp_path/pred``."""
    return ["predict", *cli_args(root, tmp_path)[1:], "--data.init_args.predict_images", images,
            "--model.init_args.predict_dir", str(tmp_path / "pred")]


# ------------------------------------------------------------------ 1. --data.init_args.predict_images


def test_predict_images_takes_one_image_file_and_a_glob(tmp_path):
    from cbsa_dense.data.seg_folder import SegFolderDataModule

    root = make_dataset(tmp_path / "data")
    image = root / "images" / "val" / "val1.png"

    def predicted(value: str) -> list[Path]:
        data = SegFolderDataModule(root=str(root), predict_images=value, num_workers=0)
        return [path for path, mask in data.make_dataset("predict").samples]

    assert predicted(str(image)) == [image]                              # one file: that image
    assert predicted(str(root / "images" / "*" / "*1.png")) == [root / "images" / "train" / "train1.png", image]
    assert predicted(str(root / "images" / "val")) == [root / "images" / "val" / "val0.png", image]


def test_predict_images_one_file_through_the_cli(tmp_path):
    from cbsa_dense.cli import main

    root = make_dataset(tmp_path / "data")
    assert main(_predict_args(root, tmp_path, str(root / "images" / "val" / "val1.png"))) == 0
    assert [p.name for p in (tmp_path / "pred" / "labels").glob("*.png")] == ["val1.png"]


@pytest.mark.parametrize("value, expected", [
    ("missing_folder", "no such file or folder (give a folder of images, an image file or a glob"),
    ("missing/*.png", "the pattern matches no image file"),
    ("classes.txt", "classes.txt is not an image file"),
])
def test_predict_images_that_name_no_image(tmp_path, capsys, monkeypatch, value, expected):
    root = make_dataset(tmp_path / "data")
    monkeypatch.chdir(root)
    line = cli_user_error(_predict_args(root, tmp_path, value), capsys)
    assert f"--data.init_args.predict_images {value}: {expected}" in line, line
    assert "does not exist" not in line


def test_a_file_given_as_an_image_folder_is_called_a_file(tmp_path):
    from cbsa_dense.data.seg_dataset import list_images, pair_by_stem

    image = make_dataset(tmp_path / "data") / "images" / "val" / "val0.png"
    with pytest.raises(DataError, match=rf"image folder {image} is a file, not a folder: give the folder"):
        list_images(image)
    with pytest.raises(DataError, match=rf"mask folder {image} is a file, not a folder"):
        pair_by_stem([image], image)


# ------------------------------------------------------------------ 2. a missing image, a folder


def test_a_missing_image_does_not_exist_and_a_folder_is_a_folder(tmp_path):
    from cbsa_dense.data.seg_labels import read_image, read_mask

    with pytest.raises(DataError, match=rf"^image {tmp_path / 'gone.jpg'} does not exist: check the path$"):
        read_image(tmp_path / "gone.jpg")
    with pytest.raises(DataError, match=rf"^mask {tmp_path / 'gone.png'} does not exist: check the path$"):
        read_mask(tmp_path / "gone.png", 3)
    (tmp_path / "album.jpg").mkdir()
    with pytest.raises(DataError, match=r"album\.jpg is a folder, not an image: give an image file$"):
        read_image(tmp_path / "album.jpg")
    (tmp_path / "notes.jpg").write_text("not an image")                 # a real non-image keeps its message
    with pytest.raises(DataError, match=r"the file is corrupt or not an image"):
        read_image(tmp_path / "notes.jpg")


@pytest.mark.parametrize("case", ["missing", "folder"])
def test_a_missing_training_image_through_the_cli(tmp_path, capsys, case):
    root = make_dataset(tmp_path / "data")
    image = root / "images" / "train" / "train1.png"
    image.unlink()
    if case == "missing":
        image.symlink_to(tmp_path / "moved_away.png")                  # listed, but not there any more
        expected = f"image {image} does not exist: check the path"
    else:
        image.mkdir()
        expected = f"image {image} is a folder, not an image"
    line = cli_user_error(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"), capsys)
    assert expected in line and "corrupt" not in line, line


# ------------------------------------------------------------------ 3. not a checkpoint vs Python objects


class Custom:
    """A class a weights-only load refuses."""


def _bad_checkpoints(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    files = {}
    random = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    assert random[:1] != b"\x80" and random[:2] != b"PK"
    files["random"] = folder / "random.ckpt"
    files["random"].write_bytes(random)                                  # 1 MiB of random bytes
    files["PK random"] = folder / "pk_random.ckpt"
    files["PK random"].write_bytes(b"PK" + random[2:])
    files["zip"] = folder / "notes.ckpt"
    with zipfile.ZipFile(files["zip"], "w") as archive:                 # a real zip, not a torch archive
        archive.writestr("notes.txt", "epoch 3")
    files["pickle"] = folder / "state.pkl"
    files["pickle"].write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))  # pickle.dump, not torch.save
    files["objects"] = folder / "objects.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Custom()}, files["objects"])
    files["legacy objects"] = folder / "legacy_objects.ckpt"
    torch.save({"extra": Custom()}, files["legacy objects"], _use_new_zipfile_serialization=False)
    return files


EXPECTED = {
    "random": r"random\.ckpt is not a PyTorch checkpoint \(it starts with b'.{4,16}'\): give a file written by "
              r"torch\.save, Lightning or safetensors$",
    "PK random": r"pk_random\.ckpt is not a PyTorch checkpoint \(it starts with b'PK",
    "zip": r"notes\.ckpt is a zip archive, not a PyTorch checkpoint \(it holds notes\.txt, no data\.pkl\)",
    "pickle": r"state\.pkl is a plain Python pickle \(it starts with b'\\x80\\x0\d.*\), not a PyTorch checkpoint",
    "objects": r"objects\.ckpt as a weights-only torch checkpoint: it holds Python objects that a safe load refuses "
               r"\(tests\.test_first_hour_errors\.Custom\); re-save it with tensors",
    "legacy objects": r"legacy_objects\.ckpt as a weights-only .* refuses \(tests\.test_first_hour_errors\.Custom\); "
                      r"re-save",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_each_kind_of_non_checkpoint_is_named_as_what_it_is(tmp_path, case, recwarn):
    from cbsa_dense.models.checkpoint import read_checkpoint

    path = _bad_checkpoints(tmp_path)[case]
    recwarn.clear()
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]     # the one line says it all
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert re.search(EXPECTED[case], message), message
    assert ("re-save" in message) == (case in ("objects", "legacy objects", "pickle")), message  # only pickles
    assert ("truncated" in message) is False and "corrupt" not in message


def test_random_bytes_through_load_and_the_cli(tmp_path, capsys):
    import cbsa_dense

    path = _bad_checkpoints(tmp_path)["random"]
    with pytest.raises(CheckpointError, match=r"is not a PyTorch checkpoint \(it starts with") as caught:
        cbsa_dense.load(path)
    assert "re-save" not in str(caught.value)
    line = cli_user_error(["predict", "--ckpt_path", str(path), "--images", str(tmp_path)], capsys)
    assert f"{path} is not a PyTorch checkpoint (it starts with" in line and "re-save" not in line


def test_truncated_and_corrupt_torch_files_stay_named_so(tmp_path):
    from cbsa_dense.models.checkpoint import read_checkpoint

    for zipped in (True, False):
        good = tmp_path / f"good_{zipped}.pt"
        torch.save({"w": torch.arange(1000.0)}, good, _use_new_zipfile_serialization=zipped)
        cut = tmp_path / f"cut_{zipped}.pt"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        with pytest.raises(CheckpointError, match=r"is truncated \(\d+ bytes, the end of the archive is missing\)"):
            read_checkpoint(cut)


# ------------------------------------------------------------------ 4. optional dependencies


EXPORT_MODULES = ["onnx", "onnxscript", "onnxruntime"]


@pytest.mark.parametrize("module", EXPORT_MODULES)
def test_export_onnx_without_the_extra_names_it(tmp_path, capsys, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)                      # as if not installed
    line = cli_user_error(["export", "--ckpt_path", str(tmp_path / "m.ckpt"), "--format", "onnx", "--output",
                           str(tmp_path / "m.onnx")], capsys)
    assert line == (f"cbsa-dense export: error: export --format onnx needs the package {module}, which is not "
                    f"installed (it is not part of the base install): pip install 'cbsa_dense[export]'"), line


def test_require_tells_a_broken_install_from_a_missing_one(tmp_path, monkeypatch):
    from cbsa_dense.optional import MissingDependencyError, require

    (tmp_path / "half_installed.py").write_text("import no_such_dependency_of_it\n")
    (tmp_path / "crashing.py").write_text("raise ImportError('libfoo.so: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependencyError, match=r"^x needs half_installed, which is installed but cannot be "
                                                     r"imported \(it lacks no_such_dependency_of_it\): reinstall "
                                                     r"it with pip install 'cbsa_dense\[export\]'$"):
        require("half_installed", "export", "x")
    with pytest.raises(MissingDependencyError, match=r"crashing, which is installed but cannot be imported "
                                                     r"\(libfoo\.so: cannot open shared object file\)"):
        require("crashing", "export", "x")
    assert require("json", "export", "x") is sys.modules["json"]


def test_every_extra_is_imported_through_require():
    """No module-level or function-level ``import`` of a package that only an extra installs: each goes through
    :func:`cbsa_dense.optional.require`, which names the extra."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra_only = {req.split(">")[0].split("=")[0].split("[")[0].strip().replace("-", "_")
                  for req in project["optional-dependencies"]["export"]}
    assert extra_only == set(EXPORT_MODULES)
    found = []
    for path in sorted((ROOT / "cbsa_dense").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n and n.split(".")[0] in extra_only]
    assert not found


# ------------------------------------------------------------------ 5. other messages


def test_score_seg_file_given_as_a_folder(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred.png").write_bytes(b"")
    line = cli_user_error(["score", "seg", "--pred", str(tmp_path / "pred.png"), "--gt", str(tmp_path / "gt"),
                           "--num-classes", "3"], capsys)
    assert f"--pred folder {tmp_path / 'pred.png'} is a file, not a folder; give the folder of label PNGs" in line
    line = cli_user_error(["score", "seg", "--pred", str(tmp_path / "nope"), "--gt", str(tmp_path / "gt"),
                           "--num-classes", "3"], capsys)
    assert f"--pred folder {tmp_path / 'nope'} does not exist" in line


def test_images_with_fit_says_where_fit_reads_its_images(capsys):
    line = cli_user_error(["fit", "--images", "photos/"], capsys)
    assert "--images is an option of cbsa-dense predict only" in line
    assert "fit, validate and test read their images from the data config: give it with --config / --data" in line


def test_linearize_option_messages(tmp_path, capsys):
    (tmp_path / "done.safetensors").write_bytes(b"")
    line = cli_user_error(["linearize", "--config", "finetune_cpu.yaml"], capsys)
    assert "linearize writes the matched encoder weights to a file: give --out FILE.safetensors (or " \
           "--diagnose-only" in line
    line = cli_user_error(["linearize", "--out", str(tmp_path / "enc.pth")], capsys)
    assert f"--out {tmp_path / 'enc.pth'}: the weights are written as safetensors" in line
    assert str(tmp_path / "enc.safetensors") in line
    with pytest.raises(OutputError, match=r"done\.safetensors exists; pass --force to overwrite it"):
        from cbsa_dense.cli.commands.linearize import main as linearize

        linearize(["--out", str(tmp_path / "done.safetensors")])
    line = cli_user_error(["linearize", "--diagnose-only", "--ckpt_path", "m.ckpt"], capsys)
    assert "not --ckpt_path: to start from a checkpoint's weights, give --model.init_args.weights FILE" in line


def test_detection_predictor_without_an_input_size(monkeypatch):
    from cbsa_dense.predictor import DetectionPredictor
    from cbsa_dense.tasks.eval_protocol import DetEvaluation

    task = SimpleNamespace(evaluation=DetEvaluation(), num_classes=2, data_info={})
    with pytest.raises(CheckpointError, match=r"the detection protocol has no image_size \(the checkpoint records "
                                              r"none, or it was set to None; mode='resize'\): set "
                                              r"predictor\.image_size = N"):
        DetectionPredictor(task, "cpu")

