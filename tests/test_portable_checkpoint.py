"""A checkpoint is self-contained: copied elsewhere, without the pretrained file its training read and
without timm's definition of its ``arch``, it evaluates, predicts, exports, explains, loads and resumes,
with the evaluation protocol it records; ``cbsa_dense.load`` predicts as ``cbsa-dense predict`` does."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbsa_dense.cli import main
from tests.conftest import cli_user_error

DATA = ["--data.init_args.num_train", "4", "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2"]
QUIET = ["--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def portable(tmp_path_factory) -> dict:
    """The demo segmentation model trained 2 steps from a pretrained encoder file and named by a timm
    ``arch``; then the file and the run folder are deleted and the checkpoint lies in another folder."""
    from cbsa_dense.layers.cbsa_attention import CBSAAttention
    from cbsa_dense.models.encoders.vit import ViTEncoder

    root = tmp_path_factory.mktemp("portable")
    encoder = ViTEncoder(img_size=(96, 96), patch_size=8, embed_dim=128, depth=4, num_heads=4,
                         attn_layer=partial(CBSAAttention, grid=[4, 4], step_init=0.5))
    weights = root / "enc.pth"
    torch.save({k: v for k, v in encoder.state_dict().items() if "step_" not in k}, weights)
    data = root / "data"
    assert main(["fit", "--config", "demo_seg.yaml", "--data.init_args.root", str(data), *DATA, *QUIET,
                 "--model.init_args.encoder.init_args.arch", "vit_tiny_patch16_224",
                 "--model.init_args.encoder.init_args.pretrained", str(weights),
                 "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
                 "--trainer.default_root_dir", str(root / "runs"),
                 "--trainer.logger.init_args.save_dir", str(root / "runs")]) == 0
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    ckpt = elsewhere / "model.ckpt"
    shutil.copy(next((root / "runs").rglob("last.ckpt")), ckpt)
    weights.unlink()
    shutil.rmtree(root / "runs")
    return {"ckpt": ckpt, "data": data, "weights": weights, "elsewhere": elsewhere}


@pytest.fixture
def offline(portable, monkeypatch):
    """Run from the checkpoint's folder; timm's architecture definitions are unavailable."""
    import cbsa_dense.models.encoders.vit as vit

    def no_timm(arch):
        raise AssertionError(f"timm's definition of {arch} was read")

    monkeypatch.setattr(vit, "_timm_vit_args", no_timm)
    monkeypatch.chdir(portable["elsewhere"])
    return portable


def test_the_checkpoint_stores_no_file_and_the_resolved_architecture(portable):
    checkpoint = torch.load(portable["ckpt"], map_location="cpu", weights_only=True)
    encoder = checkpoint["hyper_parameters"]["encoder"]["init_args"]
    assert encoder["pretrained"] is None and encoder["arch"] is None
    assert {k: encoder[k] for k in ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "class_token",
                                    "reg_tokens", "no_embed_class", "init_values", "norm_eps")} == {
        "embed_dim": 128, "depth": 4, "num_heads": 4, "patch_size": 8, "mlp_ratio": 4.0, "class_token": True,
        "reg_tokens": 0, "no_embed_class": False, "init_values": None, "norm_eps": 1e-6}
    assert checkpoint["provenance"] == {"encoder.init_args.pretrained": str(portable["weights"]),
                                        "encoder.init_args.arch": "vit_tiny_patch16_224"}


def test_test_export_explain_and_loading_need_neither_the_file_nor_timm(offline, capsys):
    ckpt, data = offline["ckpt"], offline["data"]
    assert main(["test", "--ckpt_path", str(ckpt), "--data", "DemoSegDataModule", "--data.root", str(data),
                 "--data.num_train", "4", "--data.num_val", "2", *QUIET]) == 0
    assert (f"evaluation protocol (stored in {ckpt} unless set by a config or the command line): original size; "
            "sliding window 96x96, stride 64x64" in capsys.readouterr().err)
    assert main(["export", "--ckpt_path", str(ckpt), "--format", "torchscript", "--output", "m.pt",
                 "--image-size", "96", "128"]) == 0
    assert main(["explain", "--ckpt_path", str(ckpt), "--images", str(data / "images" / "validation"),
                 "--max-images", "1", "--output", "explain"]) == 0

    from cbsa_dense.tasks import SegmentationTask
    from cbsa_dense.tasks.eval_protocol import SegEvaluation
    from cbsa_dense.tasks.loading import load_task

    for task in (load_task(ckpt), SegmentationTask.load_from_checkpoint(ckpt)):
        assert tuple(task.inference.window) == (96, 96) and tuple(task.inference.stride) == (64, 64)
        assert task.evaluation.scale is None
    flipped = SegmentationTask.load_from_checkpoint(ckpt, evaluation=SegEvaluation(flip=True))   # a whole protocol
    assert flipped.inference.flip and flipped.inference.window is None
    flipped = SegmentationTask.load_from_checkpoint(ckpt, evaluation={"flip": True})   # fields of the stored one
    assert flipped.inference.flip and tuple(flipped.inference.window) == (96, 96)


def test_a_resumed_fit_does_not_read_the_pretrained_file(offline):
    """The training command, resumed: the pretrained file it names is gone (the encoder's architecture comes
    from the checkpoint, where the command does not name an ``arch``)."""
    assert main(["fit", "--config", "demo_seg.yaml", "--data.init_args.root", str(offline["data"]), *DATA, *QUIET,
                 "--model.init_args.encoder.init_args.pretrained", str(offline["weights"]),
                 "--ckpt_path", str(offline["ckpt"]), "--trainer.max_steps", "3", "--trainer.max_epochs", "2",
                 "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", "resumed",
                 "--trainer.logger.init_args.save_dir", "resumed"]) == 0
    assert next(Path("resumed").rglob("last.ckpt")).is_file()


def test_an_older_checkpoint_naming_its_files_loads_without_them(portable, tmp_path):
    """Checkpoints written before this change name the pretrained file and task weights, and keep the
    evaluation protocol beside the hyper-parameters (``eval_protocol``)."""
    from cbsa_dense.cli.stored_run import prepare_args
    from cbsa_dense.tasks.loading import load_task

    checkpoint = torch.load(portable["ckpt"], map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    hparams["encoder"]["init_args"]["pretrained"] = str(portable["weights"])
    hparams["weights"] = str(tmp_path / "gone.ckpt")
    evaluation = hparams.pop("evaluation")                     # as it was kept then
    checkpoint["eval_protocol"] = {
        "inference": {"class_path": "cbsa_dense.tasks.sliding_window.SlidingWindowInference",
                      "init_args": {k: evaluation[k]
                                    for k in ("window", "stride", "scales", "flip", "window_batch")}},
        "eval_scale": evaluation["scale"]}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    task = load_task(tmp_path / "old.ckpt")
    assert task.model.encoder.embed_dim == 128 and tuple(task.inference.window) == (96, 96)
    assert task.evaluation.scale is None                       # its eval_scale, not the (2048, 512) default
    replayed = json.loads(prepare_args(["test", "--ckpt_path", str(tmp_path / "old.ckpt")])[0][2])
    assert replayed["init_args"]["encoder"]["init_args"]["pretrained"] is None
    assert replayed["init_args"]["weights"] is None
    assert replayed["init_args"]["evaluation"]["window"] == [96, 96]
    assert replayed["init_args"]["evaluation"]["scale"] is None
    assert "inference" not in replayed["init_args"]


def test_a_stored_config_that_does_not_build_is_one_line(portable, tmp_path, capsys):
    checkpoint = torch.load(portable["ckpt"], map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["encoder"]["init_args"]["embed_dim"] = "wide"
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    line = cli_user_error(["export", "--ckpt_path", str(tmp_path / "bad.ckpt"), "--format", "torchscript",
                           "--output", str(tmp_path / "m.pt")], capsys)
    assert f"the task config stored in {tmp_path / 'bad.ckpt'} does not build a SegmentationTask" in line
    assert "encoder.init_args.embed_dim" in line and "'wide'" in line and "Namespace(" not in line


# ------------------------------------------------------------------------------------------ Python API
def test_load_predicts_what_cbsa_dense_predict_writes(offline):
    import cbsa_dense

    ckpt, data = offline["ckpt"], offline["data"]
    assert main(["predict", "--ckpt_path", str(ckpt), "--data", "DemoSegDataModule", "--data.root", str(data),
                 "--data.num_train", "4", "--data.num_val", "2", "--model.init_args.predict_dir", "predictions",
                 *QUIET]) == 0
    images = sorted((data / "images" / "validation").glob("*.jpg"))
    model = cbsa_dense.load(ckpt, device="cpu")
    assert model.class_names == ["sky", "ground", "disc", "box", "triangle", "ring"]
    labels = model.predict([str(p) for p in images])
    for path, predicted in zip(images, labels):
        written = np.asarray(Image.open(Path("predictions") / "labels" / f"{path.stem}.png"))
        assert predicted.shape == written.shape
        np.testing.assert_array_equal(predicted + 1, written)       # the demo data reduce the zero label
    rgb = np.array(Image.open(images[0]).convert("RGB"))
    np.testing.assert_array_equal(model.predict(Image.open(images[0])), labels[0])
    np.testing.assert_array_equal(model.predict(rgb), labels[0])
    from_tensor = model.predict(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert (from_tensor == labels[0]).mean() > 0.999


def test_load_predicts_detections_as_cbsa_dense_predict(det_ckpt, tmp_path, monkeypatch):
    import cbsa_dense

    data = det_ckpt.parents[4] / "data"
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--ckpt_path", str(det_ckpt), "--data", "DemoDetectionDataModule", "--data.root", str(data),
                 "--data.num_train", "4", "--data.num_val", "2", "--data.num_workers", "0",
                 "--data.eval_batch_size", "1", "--model.init_args.results_dir", "out", *QUIET]) == 0
    written = json.loads(Path("out/predictions.json").read_text())
    model = cbsa_dense.load(det_ckpt)
    assert model.image_size == 128 and model.class_names == ["circle", "square", "triangle"]
    images = json.loads((data / "annotations" / "instances_val.json").read_text())["images"]
    for info in images:
        result = model.predict(data / "val" / info["file_name"])
        assert set(result) == {"boxes", "scores", "labels", "class_names", "at_limit"}
        boxes = result["boxes"].astype(np.float64)
        mine = sorted((model.task.category_ids[label], *box[:2], *(box[2:] - box[:2]), score)
                      for box, score, label in zip(boxes, result["scores"].tolist(), result["labels"].tolist()))
        theirs = sorted((e["category_id"], *e["bbox"], e["score"]) for e in written if e["image_id"] == info["id"])
        assert len(mine) == len(theirs) > 0
        np.testing.assert_allclose(np.array(mine), np.array(theirs), rtol=0, atol=1e-4)


def test_the_detection_protocol_travels_with_the_checkpoint(det_ckpt, tmp_path, monkeypatch, capsys):
    """A detector evaluated with only the data config uses its stored input size and detection limits."""
    import cbsa_dense
    from cbsa_dense.tasks import DetectionTask

    checkpoint = torch.load(det_ckpt, map_location="cpu", weights_only=True)
    evaluation = checkpoint["hyper_parameters"]["evaluation"]
    assert evaluation["image_size"] == 128 and evaluation["mode"] == "resize"             # stored resolved
    assert evaluation["max_detection_thresholds"] == [1, 10, 100]
    evaluation["image_size"] = 96
    evaluation["max_detection_thresholds"] = [1, 5, 50]
    torch.save(checkpoint, tmp_path / "det.ckpt")
    data = det_ckpt.parents[4] / "data"
    monkeypatch.chdir(tmp_path)
    args = ["test", "--ckpt_path", "det.ckpt", "--data", "DemoDetectionDataModule", "--data.root", str(data),
            "--data.num_train", "4", "--data.num_val", "2", "--data.num_workers", "0", *QUIET,
            "--model.init_args.head.init_args.detections_per_img", "3"]
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert ("evaluation protocol (stored in det.ckpt unless set by a config or the command line): resize: longest "
            "side to 96, zero-padded square; max_detection_thresholds [1, 5, 50]") in err, err
    results = json.loads(next(Path("lightning_logs").rglob("test_results.json")).read_text())
    per_image = {}
    for entry in results:
        per_image[entry["image_id"]] = per_image.get(entry["image_id"], 0) + 1
    assert per_image and max(per_image.values()) == 3            # the command line's detections_per_img
    assert DetectionTask.load_from_checkpoint(tmp_path / "det.ckpt").max_detection_thresholds == [1, 5, 50]
    assert cbsa_dense.load(tmp_path / "det.ckpt").image_size == 96

