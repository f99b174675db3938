"""Predict with a checkpoint from Python, with the checkpoint's own evaluation protocol.

    import cbsa_dense
    model = cbsa_dense.load("runs/demo_seg/version_0/checkpoints/last.ckpt", device="cpu")
    labels = model.predict("photo.jpg")          # (H, W) class indices at the photo's size; model.class_names
    picture = model.draw("photo.jpg", labels)    # overlay with a legend of the classes shown

The task is rebuilt from the checkpoint alone (:func:`~cbsa_dense.tasks.loading.task_from_checkpoint`: no
training config, no pretrained file). Inputs go through the project's own pieces, as ``cbsa-dense predict``
does: :func:`~cbsa_dense.data.seg_labels.read_image`, the protocol's evaluation transform
(:func:`~cbsa_dense.tasks.eval_protocol.eval_transform`) with the normalization stored in the checkpoint,
and the task's inference code (segmentation: ``SegmentationTask.predict_scores``; detection:
``DetectionTask.predict_batch``). So the outputs equal ``cbsa-dense predict``'s for the same images.

The protocol (``model.evaluation``, a :class:`~cbsa_dense.tasks.eval_protocol.SegEvaluation` or
:class:`~cbsa_dense.tasks.eval_protocol.DetEvaluation`) is the checkpoint's; its settings are keyword
arguments of :func:`load` and attributes of the predictor that take effect when set
(``model.scale = (896, 504)``, ``model.mode = "tiled"``). Any other name is refused with one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cbsa_dense.errors import CheckpointError, ConfigError, DataError

__all__ = ["load", "Predictor", "SegmentationPredictor", "DetectionPredictor"]

#: One input: an image file, a PIL image, an (H, W), (H, W, 3) or (H, W, 4) uint8 array, or a (3, H, W) float
#: tensor in [0, 1].
ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


def _device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, ConfigError (one line) when it is not there."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device {device!r} is not a torch device ({err}): give 'cpu', 'cuda' or 'cuda:N'") from None
    if found.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (found.index is not None and found.index >= count):
            have = f"{count} CUDA device(s)" if count else "no CUDA device (or no CUDA build of torch)"
            raise ConfigError(f"device {device!r} is not available: this machine has {have}; use device='cpu'")
    elif found.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine; use device='cpu'")
    return found


def load(checkpoint: str | Path, device: str | torch.device = "cpu", **settings) -> Predictor:
    """A predictor for a checkpoint written by ``cbsa-dense fit`` (segmentation or detection).

    Args:
        checkpoint: the ``.ckpt`` file.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).
        settings: evaluation-protocol settings replacing the stored ones, e.g. ``scale=(896, 504)``,
            ``window=(512, 512)``, ``flip=True`` (segmentation) or ``mode="tiled"``, ``tile_overlap=96``
            (detection); see :class:`~cbsa_dense.tasks.eval_protocol.SegEvaluation` /
            :class:`~cbsa_dense.tasks.eval_protocol.DetEvaluation`.

    Raises:
        CheckpointError: the file is missing, unreadable or not a checkpoint of a cbsa_dense task.
        ConfigError: a setting the protocol does not have (named), a value it refuses, or a device that is
            not there.
    """
    from cbsa_dense.models.checkpoint import read_checkpoint
    from cbsa_dense.tasks.eval_protocol import replace_fields
    from cbsa_dense.tasks.loading import task_from_checkpoint

    device = _device(device)
    stored = read_checkpoint(checkpoint, mmap=True)
    task = task_from_checkpoint(stored, checkpoint, device)
    task.eval()
    if getattr(task, "evaluation", None) is None:
        raise CheckpointError(f"{checkpoint} holds a {type(task).__name__}, which has no prediction for "
                              "cbsa_dense.load (a segmentation or detection task is needed)")
    if settings:
        try:
            task.evaluation = replace_fields(task.evaluation, **settings)
        except ConfigError as err:
            raise ConfigError(f"cbsa_dense.load({str(checkpoint)!r}, ...): {err}") from None
    cls = SegmentationPredictor if hasattr(task, "predict_scores") else DetectionPredictor
    return cls(task, device)


def _as_image(item: ImageLike, index: int) -> np.ndarray:
    """(H, W, 3): uint8 for files, PIL images and arrays (read as :func:`read_image` reads files); float32 in
    0..255 for float tensors."""
    from cbsa_dense.data.seg_labels import read_image

    if isinstance(item, (str, Path, Image.Image)):
        return read_image(item)
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] != 3 or not item.is_floating_point():
            raise DataError(f"input #{index}: a tensor must be (3, H, W) float in [0, 1], got {tuple(item.shape)} "
                            f"{item.dtype}")
        values = item.detach().float().cpu()
        low, high = (float(values.min()), float(values.max())) if values.numel() else (0.0, 0.0)
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            hint = " (it looks like 0..255: divide by 255)" if high > 1.0 and high <= 255.0 and low >= 0.0 else ""
            raise DataError(f"input #{index}: a float tensor must hold values in [0, 1], got {low:g}..{high:g}{hint}")
        return np.ascontiguousarray(values.permute(1, 2, 0).numpy() * 255.0)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (1, 3, 4))):
            raise DataError(f"input #{index}: an array must be uint8 (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, "
                            f"got {item.shape} {item.dtype}")
        if item.ndim == 3 and item.shape[2] == 3:
            return item
        return read_image(Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item))
    raise DataError(f"input #{index}: {type(item).__name__} is not an image: give a path, a PIL image, a uint8 "
                    f"array ((H, W), (H, W, 3) or (H, W, 4)) or a (3, H, W) float tensor in [0, 1]")


class Predictor:
    """Runs a task on images with its checkpoint's protocol. Built by :func:`load`.

    Attributes:
        task: the LightningModule (eval mode).
        evaluation: the protocol in use; each of its settings is also an attribute of the predictor that
            takes effect when set.
        class_names: one name per class.
        palette: (C, 3) uint8 class colours (the training data's, else the project's default palette).
        mean, std: the normalization of the training data ([0, 1] pixel units).
    """

    _own = frozenset({"task", "device", "mean", "std", "class_names", "palette", "transform"})

    def __init__(self, task, device: str | torch.device) -> None:
        from cbsa_dense.data.seg_labels import default_palette
        from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD

        self.task = task
        self.device = torch.device(device)
        info = dict(getattr(task, "data_info", None) or {})
        self.mean = tuple(info.get("mean") or IMAGENET_MEAN)
        self.std = tuple(info.get("std") or IMAGENET_STD)
        num_classes = int(task.num_classes)
        self.class_names = list(info.get("class_names") or getattr(task, "class_names", None)
                                or [f"class_{i}" for i in range(num_classes)])
        palette = info.get("palette")
        self.palette = (np.asarray(palette, dtype=np.uint8) if palette is not None and len(palette) >= num_classes
                        else default_palette(num_classes))
        self._build()

    # ------------------------------------------------------------------------------------- protocol
    @property
    def evaluation(self):
        """The evaluation protocol in use (the task's)."""
        return self.task.evaluation

    @evaluation.setter
    def evaluation(self, value) -> None:
        previous = self.task.evaluation
        self.task.evaluation = value
        try:
            self._build()
        except Exception:
            self.task.evaluation = previous         # a refused protocol changes nothing
            raise

    def _settings(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.task.evaluation)}

    def __getattr__(self, name: str):
        if not name.startswith("_") and "task" in self.__dict__ and name in self._settings():
            return getattr(self.task.evaluation, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name.startswith("_") or name in self._own or name == "evaluation":
            object.__setattr__(self, name, value)
            return
        from cbsa_dense.tasks.eval_protocol import replace_fields

        if name not in self._settings():
            raise ConfigError(f"{name!r} is not a setting of this {type(self).__name__}: its protocol settings are "
                              f"{', '.join(sorted(self._settings()))} (and evaluation, the whole protocol)")
        self.evaluation = replace_fields(self.task.evaluation, **{name: value})

    def _build(self) -> None:
        """Rebuild the evaluation transform from the protocol (after a setting changed)."""
        from cbsa_dense.tasks.eval_protocol import check_against_training, eval_transform

        check_against_training(self.task.evaluation, getattr(self.task, "data_info", None) or {},
                               where="recorded in the checkpoint")
        self.transform = eval_transform(self.task.evaluation, self.mean, self.std)

    def describe(self) -> str:
        """The protocol in one line."""
        return self.task.evaluation.describe()

    # ------------------------------------------------------------------------------------- predict
    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 8, **options):
        """Predict one image, or a list of them (a list of results).

        Each image is a path, a PIL image, a uint8 array ((H, W) gray, (H, W, 3) RGB, (H, W, 4) RGBA: read
        as the same image in a file is) or a (3, H, W) float tensor in [0, 1]. Consecutive inputs of the same
        size run as one batch of at most ``batch_size``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} is invalid: give an integer >= 1")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        arrays = [_as_image(item, i) for i, item in enumerate(items)]
        results: list = []
        with torch.inference_mode():
            start = 0
            while start < len(arrays):
                end = start + 1
                while (end < len(arrays) and end - start < batch_size
                       and arrays[end].shape == arrays[start].shape):
                    end += 1
                results.extend(self._predict_batch(arrays[start:end], **options))
                start = end
        return results[0] if single else results

    def _predict_batch(self, images: list[np.ndarray], **options) -> list:
        raise NotImplementedError

    def draw(self, image: ImageLike, result, **options) -> np.ndarray:
        """A picture of ``result`` (what :meth:`predict` returned for ``image``) over ``image``, (H, W, 3)
        uint8, with a legend of the classes shown."""
        raise NotImplementedError


class SegmentationPredictor(Predictor):
    """``predict`` returns (H, W) int64 class indices (into ``class_names``) at each input's original size;
    with ``probabilities=True`` a dict ``{"labels": (H, W) int64, "probabilities": (C, H, W) float32}``.

    Protocol: keep-ratio resize to ``scale`` (``None``: original size), the training normalization, and the
    protocol's inference (sliding window or whole image, scales, flip), scores resized back to the original
    size.
    """

    def _predict_batch(self, images: list[np.ndarray], probabilities: bool = False) -> list:
        x = torch.stack([torch.from_numpy(self.transform(image)["image"]) for image in images]).to(self.device)
        scores = self.task.predict_scores({"image": x, "orig_size": [tuple(image.shape[:2]) for image in images]})
        views = len(self.task.evaluation.scales) * (2 if self.task.evaluation.flip else 1)
        results = []
        for score in scores:
            labels = score.argmax(dim=0).cpu().numpy().astype(np.int64)
            if not probabilities:
                results.append(labels)
                continue
            probs = score.softmax(dim=0) if views == 1 else score          # several views: averaged already
            results.append({"labels": labels, "probabilities": probs.float().cpu().numpy()})
        return results

    def draw(self, image: ImageLike, result, alpha: float = 0.5, background: Sequence[str] | None = None,
             legend: bool = True) -> np.ndarray:
        """The labels over the image, (H, W, 3) uint8, with a legend of the classes present.

        Args:
            image: the input given to :meth:`predict`.
            result: its labels (or the dict returned with ``probabilities=True``).
            alpha: opacity of the class colours.
            background: names of classes left unpainted; default: the classes named like a background
                (``background``, ``other``, ``unlabeled``, ``void``, ``bg``), if any.
            legend: draw the legend (class colour and name, for each class present).
        """
        from cbsa_dense.interpret.seg_overlay import draw_segmentation

        labels = result["labels"] if isinstance(result, dict) else result
        return draw_segmentation(_as_image(image, 0).astype(np.uint8), labels, self.class_names, self.palette,
                                 alpha=alpha, background=background, legend=legend)


class DetectionPredictor(Predictor):
    """``predict`` returns per image ``{"boxes": (N, 4) float xyxy original pixels, "scores": (N,), "labels":
    (N,) int64 class indices, "class_names": N names}`` (plus ``"masks"`` (N, H, W) bool with a mask head).

    Protocol: ``mode`` ``resize`` (longest side resized to ``image_size`` and zero-padded to a square),
    ``native`` (the image at its own size), ``windowed`` (as native, the attention in ``image_size`` windows) or
    ``tiled`` (``image_size`` tiles overlapping by ``tile_overlap``, merged); the training normalization; the head's detection limit per training crop,
    scaled by the image's area (each result's ``at_limit`` is True when the image kept that many, so boxes
    may be missing); boxes mapped back to original pixels.
    """

    def _build(self) -> None:
        if self.task.evaluation.image_size is None:
            raise CheckpointError("the detection protocol has no image_size (the checkpoint records none, or it was "
                                  f"set to None; mode={self.task.evaluation.mode!r}): set predictor.image_size = N "
                                  "(or pass image_size=N to cbsa_dense.load)")
        super()._build()

    def _predict_batch(self, images: list[np.ndarray]) -> list:
        from cbsa_dense.data.coco_dataset import collate_detection

        samples = [self.transform(image, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), []) for image in images]
        batch = collate_detection([{"image": s["image"]} for s in samples])
        batch.update({"image_size": [tuple(s["image_size"]) for s in samples],
                      "scale": [tuple(float(v) for v in s["scale"]) for s in samples],
                      "orig_size": [tuple(image.shape[:2]) for image in images]})
        batch["image"] = batch["image"].to(self.device)
        results = []
        preds = self.task.predict_batch(batch)
        for pred, at_limit in zip(preds, self.task.at_limit or [False] * len(preds)):
            labels = pred["labels"].cpu().numpy().astype(np.int64)
            result = {"boxes": pred["boxes"].cpu().numpy(), "scores": pred["scores"].cpu().numpy(),
                      "labels": labels, "class_names": [self.class_names[i] for i in labels],
                      "at_limit": bool(at_limit)}
            if "masks" in pred:
                result["masks"] = pred["masks"].cpu().numpy().astype(bool)
            results.append(result)
        return results

    def draw(self, image: ImageLike, result: dict, score_threshold: float = 0.3, legend: bool = True) -> np.ndarray:
        """The detections scoring at least ``score_threshold`` over the image, (H, W, 3) uint8, labelled
        ``"<class> <score>"``, with a legend of the classes drawn."""
        from cbsa_dense.interpret.det_overlay import draw_detections
        from cbsa_dense.interpret.seg_overlay import draw_legend

        picture = draw_detections(_as_image(image, 0).astype(np.uint8), result["boxes"], result["scores"],
                                  result["labels"], self.class_names, score_threshold, self.palette)
        shown = sorted({int(label) for label, score in zip(result["labels"], result["scores"])
                        if score >= score_threshold})
        return draw_legend(picture, [(self.class_names[i], self.palette[i]) for i in shown]) if legend else picture
