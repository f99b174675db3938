"""Predict with a checkpoint from Python, with the checkpoint's own evaluation protocol.

    import cbsa_dense
    model = cbsa_dense.load("runs/demo_seg/version_0/checkpoints/last.ckpt", device="cpu")
    labels = model.predict("photo.jpg")          # (H, W) class indices at the photo's size; model.class_names

The task is rebuilt from the checkpoint alone (:func:`~cbsa_dense.tasks.loading.task_from_checkpoint`: no
training config, no pretrained file). Inputs go through the project's own pieces, as ``cbsa-dense predict``
does: :func:`~cbsa_dense.data.seg_labels.read_image`, the datamodules' evaluation transforms with the
normalization stored in the checkpoint (``data_info``), and the task's inference code (segmentation:
``SegmentationTask.predict_scores`` with the stored sliding window / scales / flip; detection:
``DetectionTask.predict_batch``). So the outputs equal ``cbsa-dense predict``'s for the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbsa_dense.errors import CheckpointError, ConfigError, DataError

__all__ = ["load", "Predictor", "SegmentationPredictor", "DetectionPredictor"]

#: One input: an image file, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) float tensor in [0, 1].
ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor

#: ``eval_scale`` of a segmentation checkpoint that records none (the datamodules' default, mmseg's ADE20K).
DEFAULT_EVAL_SCALE = (2048, 512)


def load(checkpoint: str | Path, device: str | torch.device = "cpu", **overrides) -> Predictor:
    """A predictor for a checkpoint written by ``cbsa-dense fit`` (segmentation or detection).

    Args:
        checkpoint: the ``.ckpt`` file.
        device: where the model runs (``"cpu"``, ``"cuda"``, ...).
        overrides: task arguments replacing the stored ones, e.g. ``inference={"class_path":
            "SlidingWindowInference", "init_args": {"flip": True}}`` (``None`` values keep the stored ones).

    Raises:
        CheckpointError: the file is missing, unreadable or not a checkpoint of a cbsa_dense task.
    """
    from cbsa_dense.models.checkpoint import read_checkpoint, stored_data_eval
    from cbsa_dense.tasks.loading import task_from_checkpoint

    stored = read_checkpoint(checkpoint, mmap=True)
    task = task_from_checkpoint(stored, checkpoint, device,
                                overrides={k: v for k, v in overrides.items() if v is not None})
    task.eval()
    protocol = stored_data_eval(stored)
    if hasattr(task, "predict_scores"):
        return SegmentationPredictor(task, protocol, device)
    if hasattr(task, "predict_batch"):
        return DetectionPredictor(task, protocol, device)
    raise CheckpointError(f"{checkpoint} holds a {type(task).__name__}, which has no prediction for cbsa_dense.load "
                          f"(a segmentation or detection task is needed)")


def _as_image(item: ImageLike, index: int) -> np.ndarray:
    """(H, W, 3): uint8 for files, PIL images and uint8 arrays; float32 in 0..255 for float tensors."""
    from cbsa_dense.data.seg_labels import read_image

    if isinstance(item, (str, Path, Image.Image)):
        return read_image(item)
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3 or not item.is_floating_point():
            raise DataError(f"input #{index}: a tensor must be (3, H, W) float in [0, 1], got {tuple(item.shape)} "
                            f"{item.dtype}")
        return np.ascontiguousarray(item.detach().float().cpu().permute(1, 2, 0).numpy() * 255.0)
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise DataError(f"input #{index}: an array must be (H, W, 3) uint8 RGB, got {item.shape} {item.dtype}")
        return item
    raise DataError(f"input #{index}: {type(item).__name__} is not an image: give a path, a PIL image, an (H, W, 3) "
                    f"uint8 array or a (3, H, W) float tensor in [0, 1]")


class Predictor:
    """Runs a task on images with its checkpoint's protocol. Built by :func:`load`.

    Attributes:
        task: the LightningModule (eval mode).
        class_names: one name per class.
        mean, std: the normalization of the training data ([0, 1] pixel units).
    """

    def __init__(self, task, protocol: dict, device: str | torch.device) -> None:
        """``protocol``: the data's evaluation settings the checkpoint records (``stored_data_eval``)."""
        from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD

        self.task = task
        self.protocol = protocol
        self.device = torch.device(device)
        info = dict(getattr(task, "data_info", None) or {})
        self.mean = tuple(info.get("mean") or IMAGENET_MEAN)
        self.std = tuple(info.get("std") or IMAGENET_STD)
        num_classes = int(task.num_classes)
        self.class_names = list(info.get("class_names") or getattr(task, "class_names", None)
                                or [f"class_{i}" for i in range(num_classes)])

    def predict(self, images: ImageLike | Sequence[ImageLike]):
        """Predict one image, or a list of them (a list of results).

        Each image is a path, a PIL image, an (H, W, 3) uint8 RGB array or a (3, H, W) float tensor in [0, 1].
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        with torch.inference_mode():
            results = [self._predict_one(_as_image(item, i)) for i, item in enumerate(items)]
        return results[0] if single else results

    def _predict_one(self, image: np.ndarray):
        raise NotImplementedError


class SegmentationPredictor(Predictor):
    """``predict`` returns (H, W) int64 class indices (into ``class_names``) at each input's original size.

    Protocol: keep-ratio resize to the checkpoint's ``eval_scale`` (``None``: original size; a checkpoint
    that records none: :data:`DEFAULT_EVAL_SCALE`), the training normalization, and the task's ``inference``
    (sliding window or whole image, scales, flip), scores resized back to the original size.
    """

    def __init__(self, task, protocol: dict, device: str | torch.device) -> None:
        from cbsa_dense.data.seg_transforms import SegEvalTransform

        super().__init__(task, protocol, device)
        scale = protocol["eval_scale"] if "eval_scale" in protocol else DEFAULT_EVAL_SCALE
        self.eval_scale = tuple(scale) if scale is not None else None
        self.transform = SegEvalTransform(self.eval_scale, mean=self.mean, std=self.std)

    def describe(self) -> str:
        """The protocol in one line."""
        scale = list(self.eval_scale) if self.eval_scale is not None else None
        return f"eval_scale {scale}, inference {self.task.inference.describe()}"

    def _predict_one(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.transform(image)["image"])[None].to(self.device)
        scores = self.task.predict_scores({"image": x, "orig_size": [tuple(image.shape[:2])]})[0]
        return scores.argmax(dim=0).cpu().numpy().astype(np.int64)


def _protocol_setting(name: str, cast) -> property:
    """A :class:`DetectionPredictor` setting stored as ``_<name>``; setting it rebuilds the transform."""

    def get(self):
        return getattr(self, f"_{name}")

    def set_(self, value) -> None:
        setattr(self, f"_{name}", None if value is None else cast(value))
        self._build()

    return property(get, set_, doc=f"The evaluation protocol's ``{name}``; setting it rebuilds the transform.")


class DetectionPredictor(Predictor):
    """``predict`` returns per image ``{"boxes": (N, 4) float xyxy original pixels, "scores": (N,), "labels":
    (N,) int64 class indices, "class_names": N names}`` (plus ``"masks"`` (N, H, W) bool with a mask head).

    Protocol: the checkpoint's data ``eval_mode``: ``resize`` (longest side resized to ``image_size`` and
    zero-padded to a square), ``native`` (the image at its own size) or ``tiled`` (``image_size`` tiles
    overlapping by ``tile_overlap``, merged); the training normalization, the stored head's detection limit;
    boxes mapped back to original pixels. ``eval_mode`` and ``tile_overlap`` can be set on the predictor.
    """

    def __init__(self, task, protocol: dict, device: str | torch.device) -> None:
        super().__init__(task, protocol, device)
        size = protocol.get("image_size")
        if size is None:
            raise CheckpointError("the checkpoint records no detection input size (data_info image_size): set "
                                  "predictor.image_size before predicting")
        self._eval_mode = str(protocol.get("eval_mode") or "resize")
        self._image_size = int(size)
        self._tile_overlap = protocol.get("tile_overlap")
        self.native_scale = float(protocol.get("native_scale") or 1.0)

    def _build(self) -> None:
        from cbsa_dense.data.coco_datamodule import resolve_eval_mode
        from cbsa_dense.data.det_transforms import DetectionTransform

        self._tile_overlap = resolve_eval_mode(self._eval_mode, self._tile_overlap, self._image_size)
        if self._eval_mode == "resize" and (self.task.data_info or {}).get("train_mode") == "native":
            raise ConfigError("this model was trained on objects at their own pixel size (data train_mode native): "
                              "eval_mode resize would shrink them; use eval_mode native or tiled")
        self.transform = DetectionTransform(self._image_size, train=False, mean=self.mean, std=self.std,
                                            native=self._eval_mode != "resize",
                                            native_scale=getattr(self, "_native_scale", 1.0))

    # Protocol settings: setting one rebuilds the transform (and checks the combination).
    image_size = _protocol_setting("image_size", int)
    eval_mode = _protocol_setting("eval_mode", str)
    native_scale = _protocol_setting("native_scale", float)
    tile_overlap = _protocol_setting("tile_overlap", lambda v: v)

    def describe(self) -> str:
        """The protocol in one line."""
        scaled = f", scaled by {self.native_scale:g}" if self.native_scale != 1.0 else ""
        if self._eval_mode == "native":
            return f"eval_mode native (the image at its own size{scaled})"
        if self._eval_mode == "tiled":
            return f"eval_mode tiled ({self.image_size} px tiles overlapping by {self.tile_overlap} px{scaled})"
        return f"image_size {self.image_size} (longest side, zero-padded square)"

    def _predict_one(self, image: np.ndarray) -> dict:
        out = self.transform(image, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), [])
        batch = {"image": out["image"][None].to(self.device), "image_size": [tuple(out["image_size"])],
                 "scale": [tuple(float(v) for v in out["scale"])], "orig_size": [tuple(image.shape[:2])],
                 "tile": (self.image_size, self.tile_overlap) if self.eval_mode == "tiled" else None}
        pred = self.task.predict_batch(batch)[0]
        labels = pred["labels"].cpu().numpy().astype(np.int64)
        result = {"boxes": pred["boxes"].cpu().numpy(), "scores": pred["scores"].cpu().numpy(), "labels": labels,
                  "class_names": [self.class_names[i] for i in labels]}
        if "masks" in pred:
            result["masks"] = pred["masks"].cpu().numpy().astype(bool)
        return result
