"""Semantic-segmentation scores exactly as MMSegmentation's ``IoUMetric`` computes them.

Per class, intersections and unions are summed over the WHOLE dataset (pixels whose ground truth is
the ignore index are dropped), ``IoU = I / U`` with ``U = 0`` giving NaN (left out of the mean),
``mIoU = nanmean(IoU)``, ``aAcc = correct / labelled pixels``, ``mAcc = nanmean(per-class recall)``.
A class that is predicted but absent from the ground truth has ``U > 0`` and ``IoU = 0``: it counts.
Predictions outside ``[0, num_classes)`` count as wrong for every class (mmseg's ``histc`` drops them).

The state is one ``num_classes x (num_classes + 1)`` confusion matrix (rows: ground truth, columns:
prediction, last column: out-of-range predictions), summed across ranks. A ``torch.bincount`` keeps it
deterministic and cheap (``torchmetrics``' confusion matrix needs pixels x C^2 memory under
``deterministic=True``; protocols.md).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from cbsa_dense.errors import ConfigError


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Confusion counts of one batch.

    Args:
        pred: predicted class indices, any shape, integer.
        target: ground-truth class indices, same shape; ``ignore_index`` pixels are dropped.
        num_classes: number of classes C.
        ignore_index: ground-truth value that is not scored.

    Returns:
        (C, C + 1) int64 counts; ``[t, p]`` = pixels of class ``t`` predicted as ``p``, column C =
        predictions outside ``[0, C)``.

    Raises:
        ValueError: a ground-truth value outside ``[0, C)`` that is not ``ignore_index``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(target.shape)}")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        bad = target[(target < 0) | (target >= num_classes)][0].item()
        raise ValueError(f"ground-truth value {bad} is outside [0, {num_classes}) and is not the ignore "
                         f"index {ignore_index}")
    pred = torch.where((pred < 0) | (pred >= num_classes), torch.full_like(pred, num_classes), pred)
    counts = torch.bincount(target * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def scores_from_confusion(confusion: Tensor) -> dict[str, Tensor]:
    """mIoU, aAcc, mAcc and per-class IoU / accuracy from a (C, C + 1) confusion matrix.

    Returns:
        ``miou``, ``aacc``, ``macc`` (0-d float64 tensors, fractions; NaN when nothing is scored),
        ``iou`` and ``acc`` (C,) float64 with NaN for classes with an empty union / no ground truth,
        ``pred_pixels`` and ``label_pixels`` (C,) int64: the scored pixels predicted as each class and
        labelled as each class (a class with labelled pixels and ``pred_pixels == 0`` is never predicted:
        its IoU is 0 because the model does not output it at all, not because it outputs it in the wrong
        places).
    """
    counts = confusion.long()
    confusion = confusion.double()
    num_classes = confusion.shape[0]
    intersect = confusion[:, :num_classes].diagonal()
    area_label = confusion.sum(dim=1)
    area_pred = confusion[:, :num_classes].sum(dim=0)
    union = area_label + area_pred - intersect
    iou = intersect / union
    acc = intersect / area_label
    total = area_label.sum()
    return {"miou": iou.nanmean(), "aacc": intersect.sum() / total, "macc": acc.nanmean(), "iou": iou,
            "acc": acc, "pred_pixels": counts[:, :num_classes].sum(dim=0), "label_pixels": counts.sum(dim=1)}


class SegmentationMetrics(Metric):
    """Dataset-level mIoU / aAcc / mAcc (MMSegmentation's definition); update per batch, compute per epoch.

    Args:
        num_classes: number of classes C.
        ignore_index: ground-truth value that is not scored.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confusion", default=torch.zeros(num_classes, num_classes + 1, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` and ``target`` integer class maps of the same shape (e.g. (B, H, W))."""
        self.confusion += confusion_matrix(pred, target, self.num_classes, self.ignore_index).to(
            self.confusion.device)

    def compute(self) -> dict[str, Tensor]:
        """See :func:`scores_from_confusion`."""
        return scores_from_confusion(self.confusion)
