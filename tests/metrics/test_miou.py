"""The mIoU metric against a plain NumPy statement of MMSegmentation's IoUMetric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from cbsa_dense.metrics.miou import SegmentationMetrics, confusion_matrix


def mmseg_reference(preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int, ignore: int = 255) -> dict:
    """mmseg ``intersect_and_union`` summed over the dataset, then ``total_area_to_metrics``."""
    inter = np.zeros(num_classes)
    area_pred = np.zeros(num_classes)
    area_label = np.zeros(num_classes)
    for pred, label in zip(preds, labels):
        keep = label != ignore
        pred, label = pred[keep], label[keep]
        hit = pred[pred == label]
        inter += np.histogram(hit, bins=num_classes, range=(0, num_classes))[0]  # histc(0, C-1) on ints
        area_pred += np.histogram(pred, bins=num_classes, range=(0, num_classes))[0]
        area_label += np.histogram(label, bins=num_classes, range=(0, num_classes))[0]
    union = area_pred + area_label - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
        acc = inter / area_label
    return {"aAcc": inter.sum() / area_label.sum(), "IoU": iou, "Acc": acc, "mIoU": np.nanmean(iou),
            "mAcc": np.nanmean(acc)}


def random_batch(rng, num_classes, shape, absent=(), ignore_frac=0.2):
    label = rng.integers(0, num_classes, size=shape)
    for c in absent:
        label[label == c] = (c + 1) % num_classes
    label[rng.random(shape) < ignore_frac] = 255
    pred = np.where(rng.random(shape) < 0.6, label, rng.integers(0, num_classes, size=shape))
    pred[pred == 255] = 0
    return pred, label


def test_matches_numpy_mmseg_definition_over_a_dataset():
    rng = np.random.default_rng(0)
    num_classes = 7
    metric = SegmentationMetrics(num_classes)
    preds, labels = [], []
    for shape in [(13, 17), (20, 9), (5, 31)]:
        # class 5 never appears in the ground truth but is predicted -> IoU 0, counted; class 6 is
        # neither labelled nor predicted -> NaN, left out.
        pred, label = random_batch(rng, num_classes, shape, absent=(5, 6))
        pred[pred == 6] = 4
        preds.append(pred)
        labels.append(label)
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    ref = mmseg_reference(preds, labels, num_classes)
    out = metric.compute()
    assert ref["IoU"][5] == 0 and np.isnan(ref["IoU"][6])
    np.testing.assert_allclose(out["iou"].numpy(), ref["IoU"], rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(out["acc"].numpy(), ref["Acc"], rtol=0, atol=1e-12, equal_nan=True)
    for key, ref_key in (("miou", "mIoU"), ("aacc", "aAcc"), ("macc", "mAcc")):
        assert out[key].item() == pytest.approx(ref[ref_key], abs=1e-12)
    # torchmetrics' macro Jaccard (checked equal to mmseg in protocols.md) agrees too
    jaccard = MulticlassJaccardIndex(num_classes, ignore_index=255, average="none", zero_division=float("nan"),
                                     validate_args=False)
    for pred, label in zip(preds, labels):
        jaccard.update(torch.from_numpy(pred), torch.from_numpy(label))
    assert out["miou"].item() == pytest.approx(jaccard.compute().nanmean().item(), abs=1e-6)


def test_dataset_level_not_mean_of_per_image_scores():
    metric = SegmentationMetrics(2)
    a_pred, a_lab = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 0])
    b_pred, b_lab = torch.tensor([1]), torch.tensor([1])
    metric.update(a_pred, a_lab)
    metric.update(b_pred, b_lab)
    # class 0: I=3, U=4 ; class 1: I=1, U=2 -> (0.75 + 0.5) / 2
    assert metric.compute()["miou"].item() == pytest.approx(0.625)


def test_out_of_range_prediction_counts_as_wrong_and_bad_ground_truth_raises():
    conf = confusion_matrix(torch.tensor([255, 0, 9]), torch.tensor([0, 0, 1]), num_classes=3)
    assert conf[0, 3] == 1 and conf[0, 0] == 1 and conf[1, 3] == 1
    with pytest.raises(ValueError, match="ground-truth value 7"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), num_classes=3)


def test_all_ignored_gives_nan_and_reset_clears():
    metric = SegmentationMetrics(3)
    metric.update(torch.zeros(4, dtype=torch.long), torch.full((4,), 255))
    assert torch.isnan(metric.compute()["miou"])
    metric.reset()
    metric.update(torch.tensor([1]), torch.tensor([1]))
    assert metric.compute()["miou"].item() == 1.0
