import json

import pytest
import torch

from cbsa_dense.cli import main
from cbsa_dense.export import DeployedSegmenter, export_checkpoint

pytest.importorskip("onnxruntime")


def test_wrapper_bakes_in_normalization():
    model = torch.nn.Identity()
    wrapped = DeployedSegmenter(model, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    x = torch.rand(1, 3, 4, 5)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapped(x), (x - mean) / std)


@pytest.mark.parametrize("fmt, suffix", [("onnx", "onnx"), ("torchscript", "pt")])
def test_export_segmentation_checkpoint_with_parity(seg_ckpt, tmp_path, capsys, fmt, suffix):
    out = tmp_path / f"model.{suffix}"
    assert main(["export", "--ckpt_path", str(seg_ckpt), "--format", fmt, "--output", str(out),
                 "--image-size", "64", "96"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["max_abs_diff"] <= 1e-4 and out.is_file()
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["input"]["shape"] == [1, 3, 64, 96] and sidecar["task"] == "segmentation"
    assert sidecar["class_names"] == ["sky", "ground", "disc", "box", "triangle", "ring"]
    assert len(sidecar["mean"]) == 3 and len(sidecar["std"]) == 3


def test_parity_failure_is_reported(seg_ckpt, tmp_path, capsys, monkeypatch):
    import cbsa_dense.export
    from cbsa_dense.export.exporter import ParityError

    with pytest.raises(ParityError, match="parity check failed"):
        export_checkpoint(seg_ckpt, tmp_path / "m.pt", "torchscript", (32, 32), tolerance=-1.0)

    def failing(*args, **kwargs):
        raise ParityError("export parity check failed for m2.pt: max |lightning - torchscript| = 0.1 > tolerance 0")

    monkeypatch.setattr(cbsa_dense.export, "export_checkpoint", failing)     # the command's report of a failure
    assert main(["export", "--ckpt_path", str(seg_ckpt), "--format", "torchscript", "--output",
                 str(tmp_path / "m2.pt"), "--image-size", "32", "32"]) == 1
    assert "cbsa-dense export: error: export parity check failed" in capsys.readouterr().err
    # a negative tolerance is a user error at the command line
    assert main(["export", "--ckpt_path", str(seg_ckpt), "--format", "torchscript", "--output",
                 str(tmp_path / "m3.pt"), "--tolerance", "-1"]) == 2


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_detection_checkpoint_with_parity(det_ckpt, tmp_path, fmt):
    result = export_checkpoint(det_ckpt, tmp_path / f"det.{fmt}", fmt, (96, 128))
    assert result.max_abs_diff <= 1e-4
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["task"] == "detection" and sidecar["outputs"][0].startswith("boxes")
    assert len(sidecar["category_ids"]) == 3 and len(sidecar["class_names"]) == 3
