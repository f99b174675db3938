"""SegmentationTask: training, exact mIoU evaluation and prediction of an encoder + segmentation head."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_only

from cbsa_dense.data.loaders import PADDING_KEY, distributed_world
from cbsa_dense.data.seg_labels import IGNORE_INDEX
from cbsa_dense.errors import ConfigError
from cbsa_dense.metrics.miou import SegmentationMetrics
from cbsa_dense.models.encoders.base import Encoder
from cbsa_dense.models.heads.seg_head_base import SegHeadFactory
from cbsa_dense.models.segmentor import Segmentor
from cbsa_dense.tasks.base import BaseTask, adopt_evaluation, run_dir, under_cli
from cbsa_dense.tasks.eval_protocol import SegEvaluation, evaluation_from
from cbsa_dense.tasks.reporting import LastValidationReport, per_class_keys

log = logging.getLogger(__name__)


class SegmentationTask(BaseTask):
    """Semantic segmentation (LightningModule).

    Training: cross-entropy (ignore 255) on logits upsampled to the crop. Validation / test: each image,
    resized by the datamodule as ``evaluation`` says, goes through the protocol's inference (whole or
    sliding window, optional multi-scale + flip); its scores are
    resized to the ORIGINAL annotation size and accumulated in a dataset-level confusion matrix; mIoU,
    aAcc and mAcc (MMSegmentation's definitions, fractions) are logged once per epoch as ``val_miou``,
    ``val_aacc``, ``val_macc`` (``test_*`` in test, plus a per-class IoU table printed and saved as
    ``test_per_class_iou.json`` in the log dir). Every validation also logs each class's IoU as
    ``val_iou_<class>`` (the class name with other characters than letters, digits and ``_`` replaced by
    ``_``; a class with neither labelled nor predicted pixels has no IoU and is not logged), and ``fit``
    prints the per-class table of its last validation at its end (once, rank 0): a class the model never
    predicts shows there as "never predicted", which the mean alone hides. Predict writes label PNGs at the original image size in
    the dataset's annotation convention (``k + 1`` for ``reduce_zero_label`` data) to
    ``<predict_dir>/labels`` and colour overlays to ``<predict_dir>/overlays``.

    The model is assembled like the detection task's (see :class:`~cbsa_dense.models.segmentor.Segmentor`):
    the encoder declares its outputs and the head is built from them and ``num_classes``.

    Args:
        encoder: an :class:`~cbsa_dense.models.encoders.Encoder` (``ViTEncoder``, ``CBTEncoder``, yours).
        head: head factory ``(in_channels, num_classes) -> SegHead`` (``CBTDecoder``, ``LinearHead``,
            ``UPerHead``); a config gives only the head's own options.
        num_classes: number of classes. Under the CLI it comes from the datamodule (``data.num_classes``,
            e.g. the number of ``class_names``) and cannot be set separately.
        evaluation: the evaluation protocol (:class:`~cbsa_dense.tasks.eval_protocol.SegEvaluation`: resize,
            sliding window, scales, flip); ``None``: the datamodule's default (ADE20K's ``(2048, 512)`` resize,
            whole image; the demo data: original size). The CLI gives it to the datamodule, which resizes
            with it; it travels with every checkpoint (resolved) and ``validate``/``test``/``predict
            --ckpt_path`` and :func:`cbsa_dense.load` use it unless the command line or a config sets it.
        predict_dir: output folder of ``predict``; ``None`` = ``<log dir>/predictions``.
        overlay_alpha: opacity of the class colours in the overlays.
        optimizer: default (``None``): the paper's (Segmenter's) SGD, Nesterov momentum 0.9, lr 1e-3, weight
            decay 0. ``torch.optim.AdamW`` with ``layer_decay`` (e.g. 0.65) is the usual alternative.
        lr_scheduler: default (``None``): polynomial decay, power 0.9, per iteration.
        weight_decay: see :class:`~cbsa_dense.tasks.base.BaseTask`.
        layer_decay: see :class:`~cbsa_dense.tasks.base.BaseTask`.
        freeze: see :class:`~cbsa_dense.tasks.base.BaseTask`.
        weights: weights-only init at the start of ``fit`` (see :class:`~cbsa_dense.tasks.base.BaseTask`),
            including the authors' released Segmenter checkpoints.
        weights_strict: see :class:`~cbsa_dense.tasks.base.BaseTask`.
        head_lr_scale: lr multiplier of the decode head (see :class:`~cbsa_dense.tasks.base.BaseTask`).
        class_weight: per-class weights of the cross-entropy loss, in the data's class order (MMSegmentation's
            ``class_weight``; the loss is the weighted mean over labelled pixels); ``None``: all 1. On the street
            frames it did not make the rare "car" class predicted (``docs/real_photos.md``).
    """

    #: the metric that ranks checkpoints (:class:`~cbsa_dense.callbacks.TaskCheckpoint`) and its mode
    checkpoint_monitor = ("val_miou", "max")
    #: the protocol this task evaluates with (the datamodules of the same kind declare it too)
    evaluation_type = SegEvaluation

    def __init__(self, encoder: Encoder, head: SegHeadFactory, num_classes: int | None = None,
                 evaluation: SegEvaluation | None = None,
                 predict_dir: str | None = None, overlay_alpha: float = 0.5,
                 optimizer: OptimizerCallable | None = None, lr_scheduler: LRSchedulerCallable | None = None,
                 weight_decay: float | None = None, layer_decay: float | None = None,
                 freeze: list[str] | None = None, weights: str | None = None, weights_strict: bool = True,
                 head_lr_scale: float = 1.0, class_weight: list[float] | None = None) -> None:
        super().__init__(optimizer, lr_scheduler, weight_decay, layer_decay, freeze, weights, weights_strict,
                         head_lr_scale)
        # Output settings are not hyper-parameters (a stored folder means nothing elsewhere). The evaluation
        # protocol is one: stored, it is replayed as a default that a command line or config overrides
        # (:mod:`cbsa_dense.cli.stored_run`). Built outside the CLI, the parts are objects, not configs.
        ignore = ["predict_dir", "overlay_alpha"]
        self.save_hyperparameters(ignore=ignore + ([] if under_cli() else ["encoder", "head", "evaluation"]))
        if num_classes is None:                # the CLI links it from the data; a config never states it
            raise ConfigError("SegmentationTask needs num_classes (the data's class count; the CLI links it)")
        self.model = Segmentor(encoder, head, num_classes)
        self.num_classes = int(num_classes)
        self._evaluation = evaluation_from(SegEvaluation, evaluation)
        self.predict_dir = predict_dir
        self.overlay_alpha = overlay_alpha
        self.val_metrics = SegmentationMetrics(self.num_classes)
        #: the logged per-class metric keys (``val_iou_<class>``), which progress lines leave out
        self.per_class_metric_keys: set[str] = set()
        self._last_validation = LastValidationReport()
        self.all_ignored_batches = 0          # training batches without any labelled pixel (see training_step)
        self.test_metrics = SegmentationMetrics(self.num_classes)
        self.register_buffer("class_weight", self._class_weight(class_weight), persistent=False)
        self.apply_freeze()

    def _class_weight(self, weights: list[float] | None) -> torch.Tensor | None:
        if weights is None:
            return None
        values = list(weights) if isinstance(weights, (list, tuple)) else None
        if (values is None or len(values) != self.num_classes
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values)
                or not any(values)):
            raise ConfigError(f"model class_weight={weights!r} is invalid: give {self.num_classes} non-negative "
                              f"numbers (one per class, in the data's class order), not all 0, or null")
        return torch.tensor([float(v) for v in values])

    def default_optimizer(self, params) -> torch.optim.Optimizer:
        """The paper's recipe (Segmenter's): SGD, Nesterov momentum 0.9, lr 1e-3, no weight decay."""
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=0.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @property
    def inference(self):
        """The protocol's :class:`~cbsa_dense.tasks.sliding_window.SlidingWindowInference`."""
        return self.evaluation.inference()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ConfigError(f"the data has num_classes={data_classes} but the model predicts "
                              f"{self.num_classes} classes (SegmentationTask num_classes)")
        self._evaluation = adopt_evaluation(self._evaluation, datamodule)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict) and "_class_path" in hparams:
            hparams["evaluation"] = self.evaluation.to_dict()   # the protocol in use, resolved

    # ----------------------------------------------------------------------------------------- train
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        loss, all_ignored = self._pixel_loss(self.model(images), masks)
        if all_ignored:
            self.all_ignored_batches += 1
            if self.all_ignored_batches == 1:
                log.warning("training batch %d (epoch %d) has no labelled pixel (all %d are ignore=%d): it adds "
                            "zero loss; such batches are counted in train_all_ignored_batches. Check the masks "
                            "of: %s", batch_idx, self.current_epoch, masks.numel(), IGNORE_INDEX,
                            ", ".join(str(p) for p in batch.get("path", [])[:4]) or "?")
        self.log("train_loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log("train_all_ignored_batches", float(all_ignored), on_step=False, on_epoch=True, reduce_fx="sum",
                 sync_dist=True, batch_size=images.shape[0])
        return loss

    def _pixel_loss(self, logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Cross-entropy of logits upsampled to the masks, and whether every pixel is ignored.

        Every pixel ignored: the mean over zero labelled pixels would be 0/0 = NaN. Such a batch teaches
        nothing: loss 0, kept in the graph so that every rank and the optimizer step as usual (``training_step``
        counts it in ``train_all_ignored_batches`` and warns once).
        """
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        if not bool((masks != IGNORE_INDEX).any()):
            return logits.sum() * 0.0, True
        return F.cross_entropy(logits, masks, weight=self.class_weight, ignore_index=IGNORE_INDEX), False

    # ------------------------------------------------- head warm-up (cbsa_dense.callbacks.HeadWarmup)
    def head_inputs(self, batch: dict) -> dict:
        """What the head needs of a training batch: the encoder's features (detached), masks and input size."""
        images = batch["image"]
        return {"features": [f.detach() for f in self.model.encoder(images)], "mask": batch["mask"],
                "size": tuple(images.shape[-2:])}

    def head_loss(self, inputs: dict) -> torch.Tensor:
        """The training loss of :meth:`head_inputs`' batch, through the head alone."""
        return self._pixel_loss(self.model.decode(inputs["features"], inputs["size"]), inputs["mask"])[0]

    # ------------------------------------------------------------------------------------------ eval
    def predict_scores(self, batch: dict) -> list[torch.Tensor]:
        """Per image: class scores (C, H0, W0) at the original size ``orig_size``."""
        images = batch["image"]
        sizes = batch["orig_size"]
        if isinstance(images, torch.Tensor) and len({tuple(s) for s in sizes}) == 1:
            scores = self.inference(self.model, images, self.num_classes, out_size=tuple(sizes[0]))
            return list(scores)
        return [self.inference(self.model, image[None], self.num_classes, out_size=tuple(size))[0]
                for image, size in zip(images, sizes)]

    def _eval_step(self, batch: dict, metrics: SegmentationMetrics) -> None:
        # Under DDP the eval loaders repeat a few images so that every rank runs the same number of steps
        # (``cbsa_dense.data.loaders.eval_loader``); the repeats are marked and left out of the dataset-level
        # sums. No collective here: the metric states are summed across ranks once, at epoch end.
        repeats = batch.get(PADDING_KEY)
        if repeats is None:
            repeats = [False] * len(batch["mask"])
            if distributed_world()[0] > 1 and not getattr(self, "_warned_unmarked_padding", False):
                self._warned_unmarked_padding = True
                log.warning("DDP evaluation with a loader that does not mark its DistributedSampler padding "
                            "(no %r key in the batch): when the number of images is not a multiple of the "
                            "world size, a few images are scored twice and the mIoU is slightly off. Build the "
                            "val/test loaders with cbsa_dense.data.loaders.eval_loader, or evaluate on one "
                            "device.", PADDING_KEY)
        for scores, mask, repeat in zip(self.predict_scores(batch), batch["mask"], repeats):
            if not repeat:
                metrics.update(scores.argmax(dim=0), mask)

    def _log_scores(self, metrics: SegmentationMetrics, prefix: str) -> dict:
        scores = metrics.compute()
        # The metric's states are summed over the ranks: every rank holds the same scores, so the mean over the
        # ranks (sync_dist) is that value; without it Lightning warns under DDP, once per key.
        for key in ("miou", "aacc", "macc"):
            self.log(f"{prefix}_{key}", scores[key].float(), prog_bar=key == "miou", sync_dist=True)
        metrics.reset()
        return scores

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        scores = self._log_scores(self.val_metrics, "val")
        keys = per_class_keys(self._class_names(), "val_iou_", taken=("val_miou", "val_aacc", "val_macc"))
        for key, iou in zip(keys, scores["iou"].tolist()):
            if iou == iou:                        # NaN: neither labelled nor predicted, nothing to score
                self.log(key, float(iou), sync_dist=True)
                self.per_class_metric_keys.add(key)
        self._last_validation.remember(self._trainer, scores)

    def on_validation_end(self) -> None:
        self._last_validation.after_validation(self.trainer, self._report_per_class)

    def on_train_end(self) -> None:
        self._last_validation.at_train_end(self._report_per_class)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        scores = self._log_scores(self.test_metrics, "test")
        self._report_per_class(scores)

    def _class_names(self) -> list[str]:
        names = self._datamodule_attr("class_names", None) or (getattr(self, "data_info", None) or {}).get(
            "class_names")
        names = list(names or [])
        return names if len(names) == self.num_classes else [f"class_{i}" for i in range(self.num_classes)]

    @rank_zero_only
    def _report_per_class(self, scores: dict, stage: str = "test", step: int | None = None) -> None:
        """Print the per-class IoU / Acc table of ``scores`` (:meth:`SegmentationMetrics.compute`); ``test`` also
        saves it as ``test_per_class_iou.json`` in the run's folder, ``fit`` prints its last validation's.

        A class with labelled pixels that the model never predicts gets the note "never predicted" (its IoU is 0
        because the model does not output it at all), one predicted but not in the ground truth "not in the
        ground truth", one with neither "absent" (no IoU: left out of the mean)."""
        names = self._class_names()
        pred = scores.get("pred_pixels")
        label = scores.get("label_pixels")
        pred = pred.tolist() if pred is not None else [None] * len(names)
        label = label.tolist() if label is not None else [None] * len(names)
        rows = []
        for name, iou, acc, n_pred, n_label in zip(names, scores["iou"].tolist(), scores["acc"].tolist(), pred, label):
            rows.append({"class": name, "iou": _nan_to_none(iou), "acc": _nan_to_none(acc),
                         "predicted_pixels": n_pred, "labelled_pixels": n_label, "note": _class_note(n_pred, n_label)})
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        if stage == "test":
            report = {"mIoU": _nan_to_none(scores["miou"].item()), "aAcc": _nan_to_none(scores["aacc"].item()),
                      "mAcc": _nan_to_none(scores["macc"].item()), "per_class": rows}
            out_dir = run_dir(self.trainer)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "test_per_class_iou.json").write_text(json.dumps(report, indent=1))
            title = f"per-class IoU (saved to {out_dir / 'test_per_class_iou.json'})"
        else:
            at = f" (step {step})" if step is not None else ""
            title = (f"per-class IoU of the last validation{at}: mIoU {_percent(scores['miou'].item())}, "
                     f"aAcc {_percent(scores['aacc'].item())}, mAcc {_percent(scores['macc'].item())}")
        table = Table()
        for col in ("class", "IoU %", "Acc %", "note"):
            table.add_column(col, justify="right" if col.endswith("%") else "left")
        for row in rows:
            table.add_row(Text(str(row["class"])),
                          *("-" if v is None else f"{100 * v:.2f}" for v in (row["iou"], row["acc"])),
                          row["note"], style="bold red" if row["note"] == "never predicted" else None)
        console = Console()
        console.print(title, soft_wrap=True, markup=False, highlight=False)
        console.print(table)
        never = [row["class"] for row in rows if row["note"] == "never predicted"]
        if never:
            console.print(f"never predicted: {', '.join(never)} (no pixel predicted as {'them' if len(never) > 1 else 'it'}: "
                          f"IoU 0)", soft_wrap=True, markup=False, highlight=False)

    # --------------------------------------------------------------------------------------- predict
    def _datamodule_attr(self, name: str, default=None):
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        value = getattr(datamodule, name, None)
        return default if value is None else value

    def prediction_outputs(self) -> list[Path]:
        """What ``predict`` writes into an explicitly chosen ``predict_dir`` (checked before any work: the
        CLI refuses to overwrite existing predictions without ``--overwrite``)."""
        if self.predict_dir is None:
            return []                                   # a fresh run directory
        return [Path(self.predict_dir) / "labels", Path(self.predict_dir) / "overlays"]

    def output_dir(self) -> Path:
        if self.predict_dir is not None:
            return Path(self.predict_dir)
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / "predictions"

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        """Per image ``{"path": its file, "labels": (H, W) class indices at its original size}``;
        :class:`~cbsa_dense.callbacks.prediction_writer.PredictionWriter` writes them."""
        return [{"path": path, "labels": scores.argmax(dim=0).cpu().numpy()}
                for scores, path in zip(self.predict_scores(batch), batch["path"])]

    def configure_callbacks(self) -> list:
        """``predict`` writes its files through :class:`~cbsa_dense.callbacks.prediction_writer.PredictionWriter`;
        ``fit`` logs at least once per epoch (:class:`~cbsa_dense.callbacks.fit_log_interval.FitLogInterval`)."""
        from cbsa_dense.callbacks.fit_log_interval import FitLogInterval
        from cbsa_dense.callbacks.prediction_writer import PredictionWriter

        return [PredictionWriter(), FitLogInterval()]


def _nan_to_none(value: float) -> float | None:
    return None if value != value else float(value)


def _percent(value: float) -> str:
    return "-" if value != value else f"{100 * value:.2f}"


def _class_note(predicted: int | None, labelled: int | None) -> str:
    """What a class's pixel counts say beyond its IoU."""
    if predicted is None or labelled is None:
        return ""
    if labelled > 0 and predicted == 0:
        return "never predicted"
    if labelled == 0:
        return "not in the ground truth" if predicted > 0 else "absent"
    return ""

