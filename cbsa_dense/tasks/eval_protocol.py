"""How a model sees an image at evaluation: one home for the evaluation protocol.

A task holds its protocol as the argument ``evaluation`` (a hyper-parameter like any other: stored in the
checkpoint and replayed with the precedence command line > ``--config`` > checkpoint). The CLI links it into
the datamodule at parse time (``model.init_args.evaluation`` -> ``data.init_args.evaluation``), which builds its
evaluation transform with :func:`eval_transform`; :class:`cbsa_dense.predictor.Predictor` uses the same
function. The task runs the inference part itself (segmentation: whole image or sliding window, scales, flip;
detection: one pass or tiles). :func:`check_against_training` says whether a protocol fits how the model was
trained; :func:`legacy_evaluation` reads the protocol of a checkpoint written before this argument existed.

* :class:`SegEvaluation`: keep-ratio resize to ``scale`` (or the original size), then ``window`` /
  ``stride`` sliding window (or the whole image), ``scales`` and ``flip`` test-time augmentation.
* :class:`DetEvaluation`: ``mode`` ``resize`` (longest side to ``image_size``, zero-padded square), ``native``
  (the image at its own pixel size times ``native_scale``, one pass), ``windowed`` (as native, the attention in
  ``image_size`` windows) or ``tiled`` (``image_size`` tiles
  overlapping by ``tile_overlap``, merged), and the metric's ``max_detection_thresholds``.

Fields left ``None`` that depend on the training data (``image_size`` and ``native_scale`` of detection) are
filled from the datamodule (:meth:`DetEvaluation.resolve`) and stored resolved, so a checkpoint says exactly
what it was evaluated with.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cbsa_dense.errors import ConfigError

__all__ = ["SegEvaluation", "DetEvaluation", "Evaluation", "eval_transform", "check_against_training",
           "legacy_evaluation", "evaluation_from", "replace_fields", "moved_setting_hint"]

#: Detection ``mode``\s.
DET_MODES = ("resize", "native", "windowed", "tiled")


def _pair(name: str, value, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and min(pair) >= 1 and all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"model evaluation {name}={_shown(value)} is invalid: give {what}")
    return pair


def _shown(value) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _scales(value) -> tuple[float, ...]:
    """Positive finite resize ratios, or a ConfigError naming ``scales`` and the value."""
    try:
        scales = None if isinstance(value, (str, bytes)) else tuple(float(s) for s in value)
    except (TypeError, ValueError):
        scales = None
    if not scales or not all(0 < s < float("inf") for s in scales):
        raise ConfigError(f"model evaluation scales={_shown(value)!r} is invalid: give positive resize ratios, "
                          "e.g. [1.0] or [0.75, 1.0, 1.25]")
    return scales


def _flag(name: str, value) -> bool:
    """``value`` as a bool (true/false, or 1/0), or a ConfigError naming the setting and the value."""
    try:
        ok = not isinstance(value, (str, bytes)) and value in (True, False)
    except (TypeError, ValueError):       # e.g. an array: no single truth value
        ok = False
    if not ok:
        raise ConfigError(f"model evaluation {name}={value!r} is invalid: give true or false")
    return bool(value)


@dataclass(frozen=True)
class SegEvaluation:
    """Segmentation evaluation protocol (validate, test, predict, :func:`cbsa_dense.load`).

    Args:
        scale: (long, short) keep-ratio resize of the image before inference (mmseg's ``Resize`` with
            ``keep_ratio``: ADE20K's ``(2048, 512)``); ``None`` keeps the original size. Scores are resized
            back to the original size before scoring or writing.
        window: (height, width) of the sliding window; ``None`` runs the whole (resized) image at once.
        stride: (height, width) step between windows; ``None`` = 2/3 of the window (mmseg's 512 / 341).
        scales: test-time resize ratios of the resized image (mmseg's TTA: 0.5 ... 1.75).
        flip: also run the horizontally flipped image (probabilities averaged).
        window_batch: windows run in one forward pass (speed only; results do not change).
    """

    scale: tuple[int, int] | None = (2048, 512)
    window: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window_batch: int = 4

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "scale", _pair("scale", self.scale, "(long, short) sides in pixels >= 1, or null for the "
                                                        "original size"))
        set_(self, "window", _pair("window", self.window, "(height, width) >= 1, or null for the whole image"))
        set_(self, "stride", _pair("stride", self.stride, "(height, width) >= 1, or null for 2/3 of the window"))
        set_(self, "scales", _scales(self.scales))
        set_(self, "flip", _flag("flip", self.flip))
        self.inference()                                   # checks window, stride, scales and window_batch

    def inference(self):
        """The :class:`~cbsa_dense.tasks.sliding_window.SlidingWindowInference` that runs it."""
        from cbsa_dense.tasks.sliding_window import SlidingWindowInference

        return SlidingWindowInference(self.window, self.stride, self.scales, self.flip, self.window_batch)

    def describe(self) -> str:
        """One line: ``resize (2048, 512) keep ratio; sliding window 512x512, stride 341x341, ...``."""
        resize = "original size" if self.scale is None else f"resize to (long, short) {list(self.scale)}, keep ratio"
        return f"{resize}; {self.inference().describe()}"

    def to_dict(self) -> dict:
        """Plain values (what a checkpoint stores)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class DetEvaluation:
    """Detection evaluation protocol (validate, test, predict, :func:`cbsa_dense.load`).

    Args:
        mode: ``resize`` (longest side resized to ``image_size``, zero-padded to a square: ViTDet's input, as
            in training), ``native`` (the whole image at its original pixel size times ``native_scale``, one
            pass: global CBSA attention, cost linear in the pixels), ``windowed`` (as ``native``, with every attention
            layer working in windows of ``image_size`` pixels, the training crop, while MLPs, neck and head see
            the whole image: :mod:`cbsa_dense.layers.windows`) or ``tiled`` (the original-size image cut
            into ``image_size`` tiles overlapping by ``tile_overlap``; each tile keeps the detections centred
            in its own part of the overlap, then class-wise NMS at the head's threshold). ``native`` and
            ``tiled`` (and ``windowed``) suit photos much larger than the training crops whose objects keep their
            pixel size (aerial and microscope images); a model trained that way (data ``train_mode: native``)
            refuses ``resize``.
        image_size: the resize side (``resize``), the tile side (``tiled``) or the attention window's side
            (``windowed``, rounded down to whole patches); ``None``: the data's training ``image_size``.
        tile_overlap: ``tiled``: overlap of neighbouring tiles in pixels, in ``[0, image_size / 2)``; at least
            the largest object's side (``None``: a quarter of the tile).
        native_scale: ``native`` / ``tiled``: the image is first scaled by this (``None``: the data's
            ``native_scale``, 1.0 unless the model was trained on enlarged photos).
        max_detection_thresholds: the metric's three detection limits per image (COCO's ``maxDets``,
            increasing); crowded scenes need e.g. ``[1, 10, 300]`` (and the head's ``detections_per_img``).
    """

    mode: str = "resize"
    image_size: int | None = None
    tile_overlap: int | None = None
    native_scale: float | None = None
    max_detection_thresholds: tuple[int, int, int] = (1, 10, 100)

    def __post_init__(self) -> None:
        from cbsa_dense.metrics.coco_map import check_max_dets

        if self.mode not in DET_MODES:
            raise ConfigError(f"model evaluation mode={self.mode!r} is invalid: give one of {', '.join(DET_MODES)}")
        if self.image_size is not None and (isinstance(self.image_size, bool) or not isinstance(self.image_size, int)
                                            or self.image_size < 1):
            raise ConfigError(f"model evaluation image_size={self.image_size!r} is invalid: give pixels >= 1, or "
                              "null for the data's image_size")
        if self.native_scale is not None and (isinstance(self.native_scale, bool) or
                                              not isinstance(self.native_scale, (int, float))
                                              or not 0 < self.native_scale <= 8):
            raise ConfigError(f"model evaluation native_scale={self.native_scale!r} is invalid: give a factor in "
                              "(0, 8], or null for the data's native_scale")
        if self.native_scale is not None:
            object.__setattr__(self, "native_scale", float(self.native_scale))
        object.__setattr__(self, "max_detection_thresholds", tuple(check_max_dets(
            _shown(self.max_detection_thresholds), "model evaluation max_detection_thresholds")))
        if self.image_size is not None:
            self.overlap()                                   # checks tile_overlap against the tile

    def overlap(self) -> int:
        """The tile overlap in pixels (default a quarter of the tile); ConfigError when out of range."""
        size = self._size()
        overlap = size // 4 if self.tile_overlap is None else self.tile_overlap
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size // 2:
            raise ConfigError(f"model evaluation tile_overlap={self.tile_overlap!r} is invalid: give pixels in "
                              f"[0, image_size / 2 = {size // 2}) (at least the largest object's side, so each "
                              "object lies whole in one tile)")
        return int(overlap)

    def _size(self) -> int:
        if self.image_size is None:
            raise ConfigError("model evaluation image_size is not resolved: set it, or evaluate with a datamodule "
                              "(its image_size is used)")
        return self.image_size

    def attention(self, encoder):
        """Context in which ``encoder`` runs under this protocol: ``windowed`` puts its attention layers in
        windows of ``image_size`` (:func:`~cbsa_dense.layers.windows.attention_windows`); other modes change
        nothing."""
        if self.mode != "windowed":
            return contextlib.nullcontext()
        from cbsa_dense.layers.windows import attention_windows

        return attention_windows(encoder, self._size())

    @property
    def tile(self) -> tuple[int, int] | None:
        """``(tile side, overlap)`` in ``tiled`` mode, else ``None``."""
        return (self._size(), self.overlap()) if self.mode == "tiled" else None

    def resolve(self, image_size: int, native_scale: float = 1.0) -> DetEvaluation:
        """This protocol with ``image_size`` / ``native_scale`` filled from the data where they are ``None``."""
        return dataclasses.replace(
            self, image_size=self.image_size if self.image_size is not None else int(image_size),
            native_scale=self.native_scale if self.native_scale is not None else float(native_scale))

    def describe(self) -> str:
        """One line, e.g. ``tiled: 224 px tiles overlapping by 96 px; max_detection_thresholds [1, 10, 300]``."""
        scaled = (f", scaled by {self.native_scale:g}" if self.native_scale not in (None, 1.0) else "")
        size = self.image_size if self.image_size is not None else "the data's image_size"
        if self.mode == "native":
            how = f"native: the image at its own size{scaled}, one pass"
        elif self.mode == "windowed":
            how = f"windowed: the image at its own size{scaled}, one pass, attention in {size} px windows"
        elif self.mode == "tiled":
            overlap = self.overlap() if self.image_size is not None else "a quarter of the tile"
            how = f"tiled: {size} px tiles overlapping by {overlap} px{scaled}"
        else:
            how = f"resize: longest side to {size}, zero-padded square"
        return f"{how}; max_detection_thresholds {list(self.max_detection_thresholds)}"

    def to_dict(self) -> dict:
        """Plain values (what a checkpoint stores)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


Evaluation = SegEvaluation | DetEvaluation


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def evaluation_from(kind: type, value) -> Evaluation | None:
    """``value`` (a protocol, a mapping of its fields, or ``None``) as a ``kind`` protocol (``None`` stays).

    Raises:
        ConfigError: a mapping with a field ``kind`` does not have (named), or a protocol of the other kind.
    """
    if value is None or isinstance(value, kind):
        return value
    if isinstance(value, Mapping):
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"model evaluation: {', '.join(map(repr, unknown))} is not a setting of {kind.__name__} "
                              f"(its settings: {', '.join(sorted(names))})")
        return kind(**dict(value))
    other = "segmentation" if isinstance(value, SegEvaluation) else "detection"
    raise ConfigError(f"model evaluation is a {type(value).__name__} ({other} protocol), but this needs a "
                      f"{kind.__name__}")


def replace_fields(protocol: Evaluation, **changes) -> Evaluation:
    """``protocol`` with some fields changed (ConfigError naming an unknown one; values checked again)."""
    names = {f.name for f in dataclasses.fields(protocol)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ConfigError(f"{', '.join(map(repr, unknown))} is not a setting of the {type(protocol).__name__} "
                          f"protocol (its settings: {', '.join(sorted(names))})")
    return dataclasses.replace(protocol, **changes)


# ------------------------------------------------------------------------------------------ transform
def eval_transform(protocol: Evaluation, mean: Sequence[float], std: Sequence[float]):
    """The evaluation transform of ``protocol`` with the training normalization (``mean``/``std`` of [0, 1]
    pixels): a :class:`~cbsa_dense.data.seg_transforms.SegEvalTransform` or an evaluation
    :class:`~cbsa_dense.data.det_transforms.DetectionTransform`. The one place that turns a protocol into a
    transform (datamodules and the predictor call it)."""
    if isinstance(protocol, SegEvaluation):
        from cbsa_dense.data.seg_transforms import SegEvalTransform

        return SegEvalTransform(protocol.scale, mean=mean, std=std)
    from cbsa_dense.data.det_transforms import DetectionTransform

    return DetectionTransform(protocol._size(), train=False, mean=mean, std=std, native=protocol.mode != "resize",
                              native_scale=protocol.native_scale if protocol.native_scale is not None else 1.0)


# ------------------------------------------------------------------------------------------ checks
def check_against_training(protocol: Evaluation, trained: Mapping[str, Any], where: str = "") -> None:
    """ConfigError when ``protocol`` does not fit how the model was trained.

    ``trained``: what the training data did (a datamodule's settings or a checkpoint's ``data_info``):
    ``train_mode``. A detector trained on objects at their own pixel size (``train_mode: native``) cannot be
    evaluated with ``mode: resize``, which would shrink every photo to one tile.
    """
    if isinstance(protocol, DetEvaluation) and trained.get("train_mode") == "native" and protocol.mode == "resize":
        source = f" ({where})" if where else ""
        raise ConfigError(f"this model was trained on objects at their own pixel size (data train_mode native{source})"
                          ": evaluation mode resize would shrink them; set model evaluation mode native, windowed or tiled")


# ------------------------------------------------------------------------------------------ old checkpoints
#: Data settings that carried the protocol before ``evaluation`` existed (``data_info`` / ``eval_protocol``).
_LEGACY_DATA_KEYS = {"eval_scale": "scale", "image_size": "image_size", "eval_mode": "mode",
                     "tile_overlap": "tile_overlap", "native_scale": "native_scale"}


def legacy_evaluation(hparams: Mapping[str, Any], checkpoint: Mapping[str, Any], kind: type) -> dict:
    """The ``evaluation`` of a checkpoint written before it was one task argument (the one legacy mapping).

    The protocol was spread over: the task's ``inference`` (a ``SlidingWindowInference`` class_path/init_args
    dict) and ``max_detection_thresholds``; ``data_info`` (``eval_scale``; detection ``image_size``,
    ``eval_mode``, ``tile_overlap``, ``native_scale``); and, before that, ``checkpoint["eval_protocol"]``.
    A segmentation checkpoint that records no ``eval_scale`` was evaluated at the datamodules' default
    ``(2048, 512)``, a detector without ``eval_mode`` with ``resize``.

    Returns:
        the protocol's fields, a dict for ``kind(**fields)``.
    """
    info = dict(checkpoint.get("data_info") or {})
    old = dict(checkpoint.get("eval_protocol") or {})
    recorded = {}
    for key, field in _LEGACY_DATA_KEYS.items():
        for source in (info, old):
            if key in source:
                recorded[field] = source[key]
                break
    if kind is SegEvaluation:
        fields: dict[str, Any] = {"scale": recorded.get("scale", (2048, 512))}
        inference = hparams.get("inference") if hparams.get("inference") is not None else old.get("inference")
        if isinstance(inference, Mapping):
            init = dict(inference.get("init_args") or {})
            fields.update({k: init[k] for k in ("window", "stride", "scales", "flip", "window_batch") if k in init})
        return fields
    fields = {k: recorded[k] for k in ("mode", "image_size", "tile_overlap", "native_scale") if k in recorded}
    limits = hparams.get("max_detection_thresholds") or old.get("max_detection_thresholds")
    if limits is not None:
        fields["max_detection_thresholds"] = limits
    return fields


#: Settings of earlier releases that the protocol now holds: old name -> where it went.
MOVED_SETTINGS = {"eval_scale": "model.init_args.evaluation.scale (segmentation)",
                  "eval_mode": "model.init_args.evaluation.mode (detection)",
                  "tile_overlap": "model.init_args.evaluation.tile_overlap (detection)",
                  "inference": "model.init_args.evaluation: window, stride, scales, flip (segmentation)",
                  "max_detection_thresholds": "model.init_args.evaluation.max_detection_thresholds (detection)"}


def moved_setting_hint(message: str) -> str:
    """For a parse error about a setting of an earlier release that moved into the task's ``evaluation``
    (``Option 'eval_scale' is not accepted``), ``" (... moved to ...)"``; else ``""``."""
    import re

    found = re.search(r"Option '([a-z_]+)[.']", message)
    if found is None or found.group(1) not in MOVED_SETTINGS:
        return ""
    return (f" ({found.group(1)} moved: the evaluation protocol is the task's, set "
            f"{MOVED_SETTINGS[found.group(1)]}; see configs/seg_custom.yaml / det_custom.yaml)")
