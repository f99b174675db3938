"""Object detection (and instance segmentation) task: torchvision losses, COCO mAP, COCO results json."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from cbsa_dense.errors import ConfigError
from cbsa_dense.metrics.coco_map import COCOMeanAveragePrecision
from cbsa_dense.models.detector import Detector, HeadFactory, NeckFactory
from cbsa_dense.models.encoders.base import Encoder
from cbsa_dense.tasks.base import BaseTask, adopt_evaluation, run_dir, under_cli
from cbsa_dense.tasks.detection_limits import (
    LimitReport,
    head_nms_settings,
    image_limit,
    keep_best,
    raised_limits,
)
from cbsa_dense.tasks.detection_results import (
    coco_results,
    detections_per_class,
    gather_results,
    per_class_table,
    per_class_values,
)
from cbsa_dense.tasks.eval_protocol import DetEvaluation, evaluation_from
from cbsa_dense.tasks.reporting import LastValidationReport, per_class_keys

#: Logged names of the COCO numbers (torchmetrics key -> our suffix); plus ``mar_{largest detection limit}``.
_LOGGED = {"map": "map", "map_50": "map_50", "map_75": "map_75", "map_small": "map_s", "map_medium": "map_m",
           "map_large": "map_l"}


class DetectionTask(BaseTask):
    """Train and evaluate a :class:`~cbsa_dense.models.detector.Detector` (ViTDet recipe by default).

    Batches come from :class:`~cbsa_dense.data.coco_datamodule.COCODetectionDataModule`. COCO mAP is
    :class:`~cbsa_dense.metrics.coco_map.COCOMeanAveragePrecision` (equal to pycocotools), updated per
    step and computed once per epoch in original image pixels with the json's crowd flags and areas;
    logged as ``{val,test}_map``, ``_map_50``, ``_map_75``, ``_map_s/m/l``, ``_mar_{M}`` (boxes) and
    ``{val,test}_segm_map...`` (masks, with a mask head). Both also log each class's AP as
    ``{val,test}_map_<class>`` (``_segm_map_<class>``; the class name with other characters than letters,
    digits and ``_`` replaced by ``_``; a class with neither ground truth nor detections is not logged), which
    doubles the metric's compute time at each validation (one more COCO evaluation, per class). ``test``
    prints the per-class AP table and ``fit`` prints its last validation's at its end (once, rank 0), with each
    class's number of detections: a class the model never detects shows as "never predicted". ``test`` and
    ``predict`` write a COCO results json (original image and category ids, xywh boxes,
    RLE masks) that pycocotools loads directly.

    Crowded scenes: two limits decide how many objects per image can count. The head keeps at most
    ``detections_per_img`` (FCOS / RetinaNet; ``box_detections_per_img`` for Faster / Mask R-CNN; 100 by
    default) detections per training crop (an image larger than the crop, ``native`` or ``tiled``, keeps that many
    per crop of its area: :mod:`~cbsa_dense.tasks.detection_limits`), and the metric scores at most ``evaluation.max_detection_thresholds[-1]`` (M,
    COCO's ``maxDets``, 100 by default) per image and class. With more objects per image than either, AP stays below
    1 even for perfect predictions: raise both, e.g. ``detections_per_img: 300`` and
    ``evaluation: {max_detection_thresholds: [1, 10, 300]}``. AP, AP50, AP75, APs/m/l and ``mar_{M}`` are computed at the
    largest limit (pycocotools' ``summarize`` would report its headline AP at 100 detections whatever the
    limits; see :mod:`cbsa_dense.metrics.coco_map`).

    Args:
        encoder: an :class:`~cbsa_dense.models.encoders.Encoder` (e.g. a CBSA ``ViTEncoder``).
        neck: factory ``(in_channels, in_stride) -> pyramid`` (``SimpleFeaturePyramid``).
        head: factory ``(in_channels, strides, num_classes) -> head`` (``FCOSHead``, ``RetinaNetHead``,
            ``FasterRCNNHead``, ``MaskRCNNHead``).
        num_classes: object categories. Under the CLI it comes from the datamodule (``data.num_classes``: the
            categories of its json) and cannot be set separately.
        mask_threshold: probability above which a predicted mask pixel is foreground.
        evaluation: the evaluation protocol (:class:`~cbsa_dense.tasks.eval_protocol.DetEvaluation`: resize,
            native, windowed or tiled input, the metric's ``max_detection_thresholds``); ``None``: the datamodule's
            default (resize to its ``image_size``, COCO's limits). The CLI gives it to the datamodule, which
            builds its evaluation transform with it; the task tiles from it. It travels with every
            checkpoint (resolved) and ``validate``/``test``/``predict --ckpt_path`` and
            :func:`cbsa_dense.load` use it unless the command line or a config sets it.
        results_dir: where ``test_results.json`` / ``predictions.json`` go (default: the trainer's log dir).
        overlays: ``predict`` also draws each image's detections over the original image file, at its
            original size, into ``<results_dir>/overlays/<file_name>.png`` (the json's ``file_name`` with
            ``.png`` for its suffix; two files that would get the same name get ``_<image id>`` appended).
            Boxes are labelled ``"<class> <score>"``, one colour per class; line width and font follow the
            image size; in crowded images boxes smaller than a text line get no label and a label that
            would cover a higher-scoring box's label is left out
            (:func:`~cbsa_dense.interpret.det_overlay.draw_detections`). Under DDP every process writes
            the overlays of the images it predicted. An output setting (not a hyper-parameter).
        overlay_score_threshold: the overlays show detections scoring at least this (in [0, 1]);
            ``predictions.json`` keeps every detection. An output setting.
        optimizer: see :class:`BaseTask`; default AdamW lr 1e-4, weight decay 0.1 (ViTDet).
        lr_scheduler: see :class:`BaseTask`; default 250 warm-up iterations, then x0.1 at 89% and 96%.
        weight_decay: see :class:`BaseTask`.
        layer_decay: layer-wise lr decay over encoder blocks (ViTDet: 0.7 for ViT-B).
        head_lr_scale: lr multiplier of the neck and head (see :class:`BaseTask`).
        freeze: see :class:`BaseTask`.
        weights: weights-only init at the start of ``fit`` (see :class:`BaseTask`).
        weights_strict: see :class:`BaseTask`.
    """

    #: the metric that ranks checkpoints (:class:`~cbsa_dense.callbacks.TaskCheckpoint`) and its mode
    checkpoint_monitor = ("val_map", "max")
    #: the protocol this task evaluates with (the datamodules of the same kind declare it too)
    evaluation_type = DetEvaluation

    def __init__(self, encoder: Encoder, neck: NeckFactory, head: HeadFactory, num_classes: int | None = None,
                 mask_threshold: float = 0.5, results_dir: str | None = None,
                 optimizer: OptimizerCallable | None = None, lr_scheduler: LRSchedulerCallable | None = None,
                 weight_decay: float | None = None, layer_decay: float | None = 0.7,
                 freeze: list[str] | None = None, weights: str | None = None, weights_strict: bool = True,
                 evaluation: DetEvaluation | None = None, head_lr_scale: float = 1.0, overlays: bool = True,
                 overlay_score_threshold: float = 0.3) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, weight_decay=weight_decay,
                         layer_decay=layer_decay, freeze=freeze, weights=weights, weights_strict=weights_strict,
                         head_lr_scale=head_lr_scale)
        if not 0.0 <= overlay_score_threshold <= 1.0:
            raise ConfigError(f"model overlay_score_threshold={overlay_score_threshold!r} is invalid: give a score "
                              "in [0, 1]")
        # Output settings stay out of the checkpoint's hyper-parameters (a stored folder means nothing
        # elsewhere); the evaluation protocol is one, replayed as a default that a command line or config
        # overrides (:mod:`cbsa_dense.cli.stored_run`).
        self.save_hyperparameters(ignore=["results_dir", "mask_threshold", "overlays", "overlay_score_threshold"]
                                  + ([] if under_cli() else ["encoder", "neck", "head", "evaluation"]))
        if num_classes is None:                # the CLI links it from the data; a config never states it
            raise ConfigError("DetectionTask needs num_classes (the data's category count; the CLI links it)")
        self.model = Detector(encoder, neck, head, num_classes)
        self.num_classes = num_classes
        self.mask_threshold = mask_threshold
        self.results_dir = results_dir
        self.overlays = overlays
        self.overlay_score_threshold = overlay_score_threshold
        self.iou_types = ("bbox", "segm") if self.model.with_masks else ("bbox",)
        self._evaluation = evaluation_from(DetEvaluation, evaluation)
        self._build_metrics()
        self.category_ids: list[int] = list(range(num_classes))
        self.class_names: list[str] = [str(i) for i in range(num_classes)]
        self._results: list[dict] = []
        #: the logged per-class metric keys (``val_map_<class>``, ...), which progress lines leave out
        self.per_class_metric_keys: set[str] = set()
        self._last_validation = LastValidationReport()
        #: images that kept as many detections as their limit allows (:mod:`~cbsa_dense.tasks.detection_limits`)
        self.limit_report = LimitReport()
        #: per image of the last :meth:`predict_batch`: whether it kept exactly its detection limit
        self.at_limit: list[bool] = []
        self.apply_freeze()

    # ----------------------------------------------------------------------------------------- setup
    def on_evaluation_change(self) -> None:
        self._build_metrics()

    @property
    def max_detection_thresholds(self) -> list[int]:
        """The metric's detection limits (the protocol's)."""
        return list(self.evaluation.max_detection_thresholds)

    def _build_metrics(self) -> None:
        limits = self.max_detection_thresholds
        if getattr(self, "_metric_limits", None) == limits:
            return
        self._metric_limits = limits
        self.val_map = COCOMeanAveragePrecision(self.iou_types, class_metrics=True, max_detection_thresholds=limits)
        self.test_map = COCOMeanAveragePrecision(self.iou_types, class_metrics=True, max_detection_thresholds=limits)

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1)

    def default_scheduler(self, optimizer: torch.optim.Optimizer):
        from cbsa_dense.tasks.schedulers import WarmupStepLR

        return WarmupStepLR(optimizer, milestones=(0.89, 0.96), gamma=0.1, warmup_iters=250)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        ids = list(getattr(datamodule, "category_ids", []) or [])
        if ids:
            if len(ids) != self.num_classes:
                raise ConfigError(f"model num_classes={self.num_classes} but the data has {len(ids)} categories "
                                 f"(ids {ids[:10]}{'...' if len(ids) > 10 else ''}); set model num_classes to "
                                 f"{len(ids)}")
            self.category_ids = ids
            self.class_names = list(getattr(datamodule, "class_names", [])) or [str(i) for i in ids]
        if self.model.with_masks and datamodule is not None and not getattr(datamodule, "with_masks", True):
            raise ConfigError(f"{type(self.model.head).__name__} predicts masks: set data with_masks: true")
        self._evaluation = adopt_evaluation(self._evaluation, datamodule)
        self._build_metrics()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["data_info"].setdefault("category_ids", list(self.category_ids))
        checkpoint["data_info"].setdefault("class_names", list(self.class_names))
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and "_class_path" in hparams:
            hparams["evaluation"] = self.evaluation.to_dict()   # the protocol in use, resolved

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.category_ids = list(self.data_info.get("category_ids", self.category_ids))
        self.class_names = list(self.data_info.get("class_names", self.class_names))

    # ----------------------------------------------------------------------------------------- steps
    def forward(self, images: Tensor, image_sizes, targets=None):
        """See :meth:`Detector.forward`."""
        return self.model(images, image_sizes, targets)

    def _targets(self, batch: dict) -> list[dict[str, Tensor]]:
        targets = [{"boxes": b, "labels": lab} for b, lab in zip(batch["boxes"], batch["labels"])]
        if self.model.with_masks:
            for target, masks in zip(targets, batch["masks"]):
                target["masks"] = masks
        return targets

    # ------------------------------------------------- head warm-up (cbsa_dense.callbacks.HeadWarmup)
    def head_inputs(self, batch: dict) -> dict:
        """What neck and head need of a training batch: the encoder's last map (detached), sizes and targets."""
        images, targets = self.model.pad(batch["image"], self._targets(batch))
        return {"encoded": self.model.encoder(images)[-1].detach(), "shape": tuple(images.shape),
                "image_size": batch["image_size"], "targets": targets}

    def head_loss(self, inputs: dict) -> Tensor:
        """The training loss of :meth:`head_inputs`' batch, through neck and head alone."""
        images = inputs["encoded"].new_zeros(()).expand(inputs["shape"])    # the head reads the padded shape alone
        return sum(self.model.decode(inputs["encoded"], images, inputs["image_size"], inputs["targets"]).values())

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        losses = self.model(batch["image"], batch["image_size"], self._targets(batch))
        loss, size = sum(losses.values()), len(batch["boxes"])
        self.log("train_loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train_{k}": v for k, v in losses.items()}, batch_size=size)
        return loss

    def predict_batch(self, batch: dict, report: bool = True) -> list[dict[str, Tensor]]:
        """Detections of a batch in original image pixels (``boxes`` xyxy, ``scores``, ``labels``, ``masks``).

        Under a ``tiled`` protocol the (original-size) images are detected tile by tile
        (:func:`~cbsa_dense.tasks.tiled_detection.detect_tiled`). Each image keeps the head's limit per training
        crop of its area (:mod:`~cbsa_dense.tasks.detection_limits`); :attr:`at_limit`: whether it reached it
        (counted for the end-of-epoch line unless ``report`` is False: pictures of the same images).
        """
        self.at_limit = []
        if self.evaluation.mode == "tiled":
            return self._predict_tiled(batch, report)
        head_limit = head_nms_settings(self.model.head)[1]
        crop = self.evaluation.image_size or max(max(hw) for hw in batch["image_size"])
        limits = [image_limit(head_limit, crop, h, w) if head_limit else None for h, w in batch["image_size"]]
        with raised_limits(self.model.head, max(limits) / head_limit if head_limit else 1.0), \
                self.evaluation.attention(self.model.encoder):
            detections = self.model(batch["image"], batch["image_size"])
        if head_limit:
            detections = [keep_best(d, limit) for d, limit in zip(detections, limits)]
            self.at_limit = self.limit_report.add([len(d["scores"]) for d in detections], limits, head_limit, report)
        return self.model.postprocess(detections, batch["scale"], batch["orig_size"], self.mask_threshold)

    def _predict_tiled(self, batch: dict, report: bool) -> list[dict[str, Tensor]]:
        from cbsa_dense.tasks.tiled_detection import detect_tiled

        if self.model.with_masks:
            raise ConfigError(f"{type(self.model.head).__name__} predicts masks, which tiled evaluation does not "
                              "merge: use evaluation mode native or resize")
        tile, overlap = self.evaluation.tile
        nms_thresh, head_limit = head_nms_settings(self.model.head)
        limits = [image_limit(head_limit, tile, h, w) if head_limit else None for h, w in batch["image_size"]]
        detections = [detect_tiled(self.model, image[:, :h, :w], tile, overlap, nms_thresh, limit)
                      for image, (h, w), limit in zip(batch["image"], batch["image_size"], limits)]
        if head_limit:
            self.at_limit = self.limit_report.add([len(d["scores"]) for d in detections], limits, head_limit, report)
        return self.model.postprocess(detections, batch["scale"], batch["orig_size"], self.mask_threshold)

    def _update(self, metric: COCOMeanAveragePrecision, batch: dict, preds: list[dict]) -> None:
        targets = []
        for gt in batch["gt"]:
            target = {k: gt[k] for k in ("boxes", "labels", "iscrowd", "area")}
            if "segm" in self.iou_types:
                target["masks"] = gt["masks"]
            targets.append(target)
        metric.update([{k: v for k, v in p.items() if k != "masks" or "segm" in self.iou_types} for p in preds],
                      targets, image_ids=batch["image_id"])  # ids: DDP padding repeats images, counted once

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._update(self.val_map, batch, self.predict_batch(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        preds = self.predict_batch(batch)
        self._update(self.test_map, batch, preds)
        self._results.extend(self.to_coco_results(preds, batch["image_id"]))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """``{"detections": per image boxes/scores/labels (original pixels), "image_ids": ..., "results": COCO
        results entries}``; :class:`~cbsa_dense.callbacks.prediction_writer.PredictionWriter` writes them."""
        preds = self.predict_batch(batch)
        return {"detections": preds, "image_ids": [int(i) for i in batch["image_id"]],
                "results": self.to_coco_results(preds, batch["image_id"])}

    def configure_callbacks(self) -> list:
        """``predict`` writes its files through :class:`~cbsa_dense.callbacks.prediction_writer.PredictionWriter`;
        ``fit`` logs at least once per epoch (:class:`~cbsa_dense.callbacks.fit_log_interval.FitLogInterval`)."""
        from cbsa_dense.callbacks.fit_log_interval import FitLogInterval
        from cbsa_dense.callbacks.prediction_writer import PredictionWriter

        return [PredictionWriter(), FitLogInterval()]

    # ------------------------------------------------------------------------------------ epoch ends
    def _log_map(self, metric: COCOMeanAveragePrecision, prefix: str) -> tuple[dict, list[int]]:
        """Log the COCO numbers and, with ``class_metrics``, the per-class AP; returns the metric's result and
        the number of detections of each class."""
        result = metric.compute()
        detections = detections_per_class(metric, self.num_classes)
        metric.reset()
        logged = {}
        mar = f"mar_{self.max_detection_thresholds[-1]}"
        for iou_type in self.iou_types:
            src = f"{iou_type}_" if len(self.iou_types) > 1 else ""
            dst = f"{prefix}_" if iou_type == "bbox" else f"{prefix}_segm_"
            logged.update({dst + ours: float(result[src + theirs]) for theirs, ours in {**_LOGGED, mar: mar}.items()})
        # The metric's states are synced over the ranks: every rank holds the same numbers, so the mean over the
        # ranks (sync_dist) is that value; without it Lightning warns under DDP, once per key.
        headline = {f"{prefix}_map", f"{prefix}_map_50"}
        self.log_dict({k: v for k, v in logged.items() if k in headline}, prog_bar=True, sync_dist=True)
        self.log_dict({k: v for k, v in logged.items() if k not in headline}, sync_dist=True)
        for iou_type in self.iou_types:
            base = f"{prefix}_map_" if iou_type == "bbox" else f"{prefix}_segm_map_"
            keys = per_class_keys(self._class_names(), base, taken=logged)
            for key, (ap, _) in zip(keys, self._per_class(result, iou_type)):
                if ap is not None:
                    self.log(key, ap, sync_dist=True)
                    self.per_class_metric_keys.add(key)
        return result, detections

    def _class_names(self) -> list[str]:
        names = list(self.class_names)
        return names if len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]

    def _per_class(self, result: dict, iou_type: str) -> list[tuple[float | None, float | None]]:
        prefix = iou_type if len(self.iou_types) > 1 else ""
        return per_class_values(result, prefix, self.max_detection_thresholds[-1], self.num_classes)

    def _report_limits(self, stage: str) -> None:
        line = self.limit_report.take_line(stage)
        if line:
            rank_zero_info(line)

    def on_validation_epoch_end(self) -> None:
        result, detections = self._log_map(self.val_map, "val")
        self._last_validation.remember(self._trainer, result, detections)
        self._report_limits("validation")

    def on_predict_epoch_end(self) -> None:
        self._report_limits("predict")

    def on_validation_end(self) -> None:
        self._last_validation.after_validation(self.trainer, self._report_per_class)

    def on_train_end(self) -> None:
        self._last_validation.at_train_end(self._report_per_class)

    def on_test_epoch_start(self) -> None:
        self._results = []

    def on_test_epoch_end(self) -> None:
        result, detections = self._log_map(self.test_map, "test")
        self._report_per_class(result, detections)
        self._report_limits("test")
        self.write_results(self._results, "test_results.json")

    def _report_per_class(self, result: dict, detections: list[int], stage: str = "test",
                          step: int | None = None) -> None:
        """Print the per-class AP table of each IoU type (rank 0): :func:`~.detection_results.per_class_table`."""
        at = f" of the last validation (step {step})" if stage == "val" and step is not None else ""
        for iou_type in self.iou_types:
            rank_zero_info(per_class_table(self._class_names(), self._per_class(result, iou_type), detections,
                                           iou_type, f"AR{self.max_detection_thresholds[-1]}", at))

    # --------------------------------------------------------------------------------------- results
    def to_coco_results(self, preds: list[dict[str, Tensor]], image_ids) -> list[dict]:
        """COCO results entries (json category ids, xywh boxes, RLE masks) of one batch of predictions."""
        return coco_results(preds, image_ids, self.category_ids)

    def prediction_outputs(self) -> list[Path]:
        """What ``predict`` writes into an explicitly chosen ``results_dir`` (checked before any work: the
        CLI refuses to overwrite existing predictions without ``--overwrite``)."""
        if self.results_dir is None:
            return []
        return [Path(self.results_dir) / "predictions.json"] + ([Path(self.results_dir) / "overlays"] if self.overlays else [])

    def results_folder(self) -> Path:
        """``results_dir``, else the run directory (no collective call: every rank may ask)."""
        return Path(self.results_dir) if self.results_dir else run_dir(self.trainer)

    def write_results(self, results: list[dict], name: str) -> None:
        """Write the COCO results of all ranks, each image once, to ``results_folder() / name`` (rank 0;
        collective under DDP: every rank calls it)."""
        if self._trainer is None:
            return
        merged = gather_results(self.trainer, results)
        if merged is None:
            return
        folder = self.results_folder()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text(json.dumps(merged))
        rank_zero_info(f"wrote {len(merged)} detections to {path}")
