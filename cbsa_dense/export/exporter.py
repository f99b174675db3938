"""Export a checkpoint to ONNX or TorchScript, write a sidecar JSON and check parity."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD
from cbsa_dense.errors import ConfigError
from cbsa_dense.export.wrappers import DeployedDetector, DeployedSegmenter
from cbsa_dense.optional import require

log = logging.getLogger(__name__)

#: what ``--format onnx`` imports: torch.onnx.export writes with onnx + onnxscript, the parity check runs
#: onnxruntime (all three from the ``export`` extra)
_ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")


class ParityError(ValueError):
    """The export's outputs differ from the Lightning model's by more than the tolerance (a result of the
    check, not a problem in the user's input: the files are left in place for inspection)."""


@dataclass
class ExportResult:
    """Paths written and the parity measured (max absolute difference over the sample inputs)."""

    model_path: Path
    sidecar_path: Path
    max_abs_diff: float


def _wrap(task) -> tuple[nn.Module, str]:
    from cbsa_dense.interpret.forward import is_detector

    info = dict(getattr(task, "data_info", None) or {})
    mean, std = info.get("mean", IMAGENET_MEAN), info.get("std", IMAGENET_STD)
    if is_detector(task.model):
        return DeployedDetector(task.model, mean, std).eval(), "detection"
    return DeployedSegmenter(task.model, mean, std).eval(), "segmentation"


def _outputs(out) -> list[np.ndarray]:
    items = out if isinstance(out, (tuple, list)) else [out]
    return [np.asarray(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t) for t in items]


def _max_diff(reference: list[np.ndarray], exported: list[np.ndarray]) -> float:
    if len(reference) != len(exported) or any(a.shape != b.shape for a, b in zip(reference, exported)):
        return float("inf")
    return max((float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0)
               for a, b in zip(reference, exported))


def export_checkpoint(ckpt_path: str | Path, output: str | Path, fmt: str = "onnx",
                      image_size: tuple[int, int] | None = None, tolerance: float = 1e-4,
                      num_samples: int = 2) -> ExportResult:
    """Export the model of a ``cbsa-dense fit`` checkpoint.

    The exported graph takes RGB float images in [0, 1] of shape (1, 3, H, W) at the export size
    (resize inputs to it) and returns logits (segmentation) or boxes/scores/labels (detection).

    Args:
        ckpt_path: the checkpoint.
        output: the model file to write; the sidecar goes next to it as ``<output>.json``.
        fmt: ``"onnx"`` or ``"torchscript"``.
        image_size: (H, W) of the exported input; default: the checkpoint's data ``image_size``, else 512 x 512.
        tolerance: largest allowed absolute difference between the Lightning model and the export.
        num_samples: random sample inputs used for the parity check.

    Raises:
        ConfigError: unknown format or image size.
        MissingDependencyError: ``fmt="onnx"`` without the ``export`` extra (onnx, onnxscript, onnxruntime).
        ParityError: parity above ``tolerance`` (the message gives the difference; the files are left in
            place for inspection).
    """
    from cbsa_dense.tasks.loading import load_task

    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"unknown export format {fmt!r}; choose 'onnx' or 'torchscript'")
    if fmt == "onnx":                             # before any work: torch.onnx.export needs onnx + onnxscript
        for module in _ONNX_MODULES:
            require(module, "export", "export --format onnx")
    task = load_task(ckpt_path)
    info = dict(getattr(task, "data_info", None) or {})
    size = tuple(image_size or info.get("image_size") or (512, 512))
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"image size must be two positive ints (H, W), got {size}")
    encoder = getattr(task.model, "encoder", None)
    if hasattr(encoder, "set_input_size"):
        encoder.set_input_size(size)          # no position-embedding resampling inside the graph
    wrapper, kind = _wrap(task)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    samples = [torch.rand(1, 3, *size, generator=generator) for _ in range(num_samples)]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            # Detection post-processing (top-k, NMS) has data-dependent shapes that torch.export rejects;
            # the TorchScript-based exporter handles them (torchvision ships ONNX symbolics for its ops).
            detection = kind == "detection"
            torch.onnx.export(wrapper, (samples[0],), str(output), dynamo=not detection, input_names=["images"],
                              output_names=["boxes", "scores", "labels"] if detection else ["logits"],
                              opset_version=17 if detection else None, external_data=False)
        else:
            traced = torch.jit.trace(wrapper, samples[0], strict=False, check_trace=False)
            traced.save(str(output))
        diffs = [_max_diff(_outputs(wrapper(x)), _run_exported(output, fmt, x)) for x in samples]
    sidecar = output.with_name(output.name + ".json")
    sidecar.write_text(json.dumps({
        "format": fmt, "task": kind, "checkpoint": str(ckpt_path),
        "input": {"name": "images", "shape": [1, 3, *size], "dtype": "float32", "range": [0.0, 1.0],
                  "layout": "NCHW", "channels": "RGB", "note": "normalization is inside the model"},
        "outputs": ["logits (1, C, H, W)"] if kind == "segmentation"
        else ["boxes (N, 4) xyxy pixels", "scores (N,)", "labels (N,) contiguous class index"],
        "mean": list(info.get("mean", IMAGENET_MEAN)), "std": list(info.get("std", IMAGENET_STD)),
        "class_names": info.get("class_names"), "category_ids": info.get("category_ids"),
        "num_classes": info.get("num_classes"), "max_abs_diff": max(diffs), "tolerance": tolerance,
    }, indent=1))
    worst = max(diffs)
    if not worst <= tolerance:
        raise ParityError(f"export parity check failed for {output}: max |lightning - {fmt}| = {worst:.3g} > "
                         f"tolerance {tolerance:.3g}")
    log.info("exported %s to %s (parity %.3g)", ckpt_path, output, worst)
    return ExportResult(output, sidecar, worst)


def _run_exported(path: Path, fmt: str, x: torch.Tensor) -> list[np.ndarray]:
    if fmt == "onnx":
        ort = require("onnxruntime", "export", "export --format onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return _outputs(torch.jit.load(str(path))(x))
