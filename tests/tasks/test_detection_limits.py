"""The detections an image keeps follow its area: the head's limit is per training crop, a whole photo keeps
that many per crop of its area, and an image that reaches its limit is reported (issue 24)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from cbsa_dense.models.encoders import ViTEncoder
from cbsa_dense.models.heads.det_faster_rcnn import FasterRCNNHead
from cbsa_dense.models.heads.det_fcos import FCOSHead
from cbsa_dense.models.necks.simple_fpn import SimpleFeaturePyramid
from cbsa_dense.tasks.detection import DetectionTask
from cbsa_dense.tasks.detection_limits import LimitReport, image_limit, raised_limits
from cbsa_dense.tasks.eval_protocol import DetEvaluation

CROP, LIMIT = 32, 5


def test_the_limit_is_per_training_crop_of_the_image_area():
    assert image_limit(300, 224, 224, 224) == 300
    assert image_limit(300, 224, 100, 150) == 300                        # never below the head's limit
    assert image_limit(300, 224, 1035, 1249) == 7730                     # ceil(300 * 1035 * 1249 / 224^2)
    assert image_limit(300, 224, 2472, 2299) == 33980


def _task(mode: str, head=None) -> DetectionTask:
    head = head or partial(FCOSHead, num_convs=1, score_thresh=0.0, detections_per_img=LIMIT)
    task = DetectionTask(ViTEncoder(img_size=CROP, patch_size=8, embed_dim=32, depth=1, num_heads=2),
                         partial(SimpleFeaturePyramid, out_channels=32, strides=(8, 16)), head, num_classes=2,
                         evaluation=DetEvaluation(mode=mode, image_size=CROP))
    return task.eval()


def _batch(height: int, width: int) -> dict:
    return {"image": torch.randn(1, 3, height, width), "image_size": [(height, width)], "scale": [(1.0, 1.0)],
            "orig_size": [(height, width)]}


@pytest.mark.parametrize("mode", ["native", "tiled"])
def test_a_whole_photo_keeps_more_than_the_crops_limit_and_says_when_it_reaches_its_own(mode):
    """Random init with score_thresh 0: every location is a candidate, so every image reaches its limit. A photo
    of 4x4 crops keeps up to 16 x 5 boxes (the crop's 5 would have cut it), and the report names the limit."""
    task = _task(mode)
    with torch.no_grad():
        (whole,) = task.predict_batch(_batch(4 * CROP, 4 * CROP))
    assert LIMIT < len(whole["scores"]) <= 16 * LIMIT
    assert task.at_limit == [len(whole["scores"]) == 16 * LIMIT]
    head = task.model.head
    assert (head.detections_per_img, head.topk_candidates) == (LIMIT, 1000)       # restored after the pass
    with torch.no_grad():
        (crop,) = task.predict_batch(_batch(CROP, CROP))
    assert len(crop["scores"]) == LIMIT and task.at_limit == [True]
    reached = 1 + (len(whole["scores"]) == 16 * LIMIT)
    line = task.limit_report.take_line("test")
    assert line.startswith(f"test: {reached} of 2 images kept as many detections as their limit allows")
    assert "detections_per_img=5 per training crop" in line
    assert task.limit_report.take_line("test") is None                 # counted once, then reset


def test_a_resized_image_keeps_the_heads_limit():
    task = _task("resize")
    with torch.no_grad():
        (result,) = task.predict_batch(_batch(CROP, CROP))
    assert len(result["scores"]) == LIMIT and task.at_limit == [True]


def test_an_image_under_its_limit_is_not_reported():
    report = LimitReport()
    assert report.add([3, 7], [5, 7], 5) == [False, True]
    assert report.take_line("predict").startswith("predict: 1 of 2 images kept")
    report.add([3], [5], 5)
    assert report.take_line("predict") is None


def test_raised_limits_scale_the_rcnn_counts_and_restore_them_on_error():
    head = FasterRCNNHead(32, [8, 16], 2, box_detections_per_img=10, rpn_post_nms_top_n_test=100)
    before = (head.roi_heads.detections_per_img, dict(head.rpn._pre_nms_top_n), dict(head.rpn._post_nms_top_n))
    with pytest.raises(RuntimeError, match="boom"), raised_limits(head, 2.5):
        assert head.roi_heads.detections_per_img == 25
        assert head.rpn._post_nms_top_n["testing"] == 250
        assert head.rpn._post_nms_top_n["training"] == before[2]["training"]
        raise RuntimeError("boom")
    assert (head.roi_heads.detections_per_img, head.rpn._pre_nms_top_n, head.rpn._post_nms_top_n) == before


def test_pictures_of_the_validation_images_are_not_counted_twice():
    """PredictionImages predicts the first validation images again for their pictures (``report=False``): the
    end-of-validation line counts each image once, and ``at_limit`` is still given."""
    task = _task("native")
    with torch.no_grad():
        task.predict_batch(_batch(CROP, CROP), report=False)
        assert task.at_limit == [True] and task.limit_report.take_line("validation") is None
        task.predict_batch(_batch(CROP, CROP))
    assert task.limit_report.take_line("validation").startswith("validation: 1 of 1 images")
