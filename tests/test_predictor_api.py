"""``cbsa_dense.load``: protocol settings as keywords and as attributes that take effect, unknown names refused by
name, a missing device refused, inputs of every accepted kind read as the same image in a file is, batching
that does not change results, probabilities on request, and pictures with a legend.

Uses the tiny demo runs trained through the CLI (``seg_run`` / ``seg_ckpt``: demo_seg.yaml, stored protocol
``scale: null``, 96x96 window, stride 64; ``det_ckpt``: demo_det.yaml, resize to 128)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cbsa_dense
from cbsa_dense.errors import ConfigError, DataError
from cbsa_dense.tasks.eval_protocol import DetEvaluation, SegEvaluation


def _images(folder: Path, count: int, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """``count`` RGB uint8 images of ``folder``, cropped to ``size`` (h, w) when given."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png"))[:count]
    assert len(files) == count, folder
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if size is not None:
        assert all(i.shape[0] >= size[0] and i.shape[1] >= size[1] for i in images)
        images = [np.ascontiguousarray(i[:size[0], :size[1]]) for i in images]
    return images


def _rgba(image: np.ndarray) -> np.ndarray:
    """``image`` with a varying alpha channel (read as files are: the alpha is dropped, not composited)."""
    h, w = image.shape[:2]
    alpha = (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)
    return np.dstack([image, alpha])


# ------------------------------------------------------------------------------------------ segmentation
@pytest.fixture(scope="module")
def seg(seg_ckpt):
    return cbsa_dense.load(seg_ckpt, "cpu")


@pytest.fixture(scope="module")
def seg_images(seg_run) -> list[np.ndarray]:
    return _images(seg_run / "data" / "images" / "training", 4)


def test_the_stored_protocol_is_the_checkpoints(seg):
    assert seg.evaluation == SegEvaluation(scale=None, window=(96, 96), stride=(64, 64))
    assert (seg.scale, seg.window, seg.stride) == (None, (96, 96), (64, 64))
    assert seg.describe() == "original size; sliding window 96x96, stride 64x64, scales [1.0], no flip"


def test_a_load_keyword_and_a_set_attribute_take_effect_alike(seg_ckpt, seg, seg_images):
    image = seg_images[0]
    assert image.shape[:2] == (96, 128)
    by_keyword = cbsa_dense.load(seg_ckpt, "cpu", scale=[64, 48])
    by_attribute = cbsa_dense.load(seg_ckpt, "cpu")
    by_attribute.scale = (64, 48)
    for model in (by_keyword, by_attribute):
        assert model.evaluation == SegEvaluation(scale=(64, 48), window=(96, 96), stride=(64, 64))
        assert model.scale == (64, 48)
        assert model.transform(image)["image"].shape == (3, 48, 64)        # min(64 / 128, 48 / 96) = 0.5
    assert seg.transform(image)["image"].shape == (3, 96, 128)
    stored = seg.predict(image, probabilities=True)
    keyword = by_keyword.predict(image, probabilities=True)
    attribute = by_attribute.predict(image, probabilities=True)
    np.testing.assert_array_equal(keyword["labels"], attribute["labels"])
    np.testing.assert_allclose(keyword["probabilities"], attribute["probabilities"], atol=1e-6)
    assert keyword["labels"].shape == stored["labels"].shape == (96, 128)          # back at the original size
    assert not np.allclose(keyword["probabilities"], stored["probabilities"], atol=1e-3)   # half the pixels
    by_attribute.evaluation = seg.evaluation                                        # the whole protocol
    np.testing.assert_allclose(by_attribute.predict(image, probabilities=True)["probabilities"],
                               stored["probabilities"], atol=1e-6)


def test_an_unknown_load_keyword_is_refused_by_name(seg_ckpt):
    with pytest.raises(ConfigError) as caught:
        cbsa_dense.load(seg_ckpt, "cpu", bogus=1)
    assert "'bogus'" in str(caught.value) and "\n" not in str(caught.value)
    assert "window" in str(caught.value)                                           # the settings it has


def test_a_bad_load_value_is_refused_by_name(seg_ckpt):
    with pytest.raises(ConfigError, match=r"window=\[0, 96\]"):
        cbsa_dense.load(seg_ckpt, "cpu", window=[0, 96])


def test_setting_a_name_that_is_not_a_setting_is_refused(seg_ckpt):
    model = cbsa_dense.load(seg_ckpt, "cpu")
    for name in ("eval_scale", "inference", "mode"):                               # old names, detection's
        with pytest.raises(ConfigError) as caught:
            setattr(model, name, (64, 48))
        assert repr(name) in str(caught.value) and "\n" not in str(caught.value)
    assert model.evaluation == SegEvaluation(scale=None, window=(96, 96), stride=(64, 64))   # unchanged
    with pytest.raises(AttributeError):
        getattr(model, "eval_scale")  # noqa: B009
    with pytest.raises(ConfigError, match="stride"):                                 # a refused value
        model.stride = (128, 128)
    assert model.stride == (64, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_device_is_refused(seg_ckpt):
    with pytest.raises(ConfigError, match="'cuda'.*not available"):
        cbsa_dense.load(seg_ckpt, "cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        cbsa_dense.load(seg_ckpt, "gpu0")


def test_a_float_tensor_in_0_255_is_refused(seg, seg_images):
    tensor = torch.from_numpy(seg_images[0]).permute(2, 0, 1).float()
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        seg.predict(tensor)
    labels = seg.predict(tensor / 255.0)
    np.testing.assert_array_equal(labels, seg.predict(seg_images[0]))


def test_gray_and_rgba_arrays_are_read_as_the_same_image_in_a_file(seg, seg_images, tmp_path):
    rgb = seg_images[1]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = _rgba(rgb)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert gray.shape == (96, 128) and rgba.shape == (96, 128, 4)
    np.testing.assert_array_equal(seg.predict(gray), seg.predict(str(tmp_path / "gray.png")))
    np.testing.assert_array_equal(seg.predict(rgba), seg.predict(tmp_path / "rgba.png"))
    np.testing.assert_array_equal(seg.predict(rgba), seg.predict(rgb))                # alpha dropped
    np.testing.assert_array_equal(seg.predict(gray[..., None]), seg.predict(gray))    # (H, W, 1)


def test_a_list_is_predicted_as_one_by_one(seg, seg_images):
    one_by_one = [seg.predict(image, probabilities=True) for image in seg_images]
    batched = seg.predict(seg_images, probabilities=True)
    assert isinstance(batched, list) and len(batched) == 4
    for single, many in zip(one_by_one, batched):
        np.testing.assert_array_equal(single["labels"], many["labels"])
        np.testing.assert_allclose(single["probabilities"], many["probabilities"], atol=1e-5)
    labels = seg.predict(seg_images, batch_size=3)                                 # 3 + 1
    for single, many in zip(one_by_one, labels):
        np.testing.assert_array_equal(single["labels"], many)
    mixed = seg.predict([seg_images[0], seg_images[1][:80, :100], seg_images[2]])   # sizes differ: runs apart
    assert [m.shape for m in mixed] == [(96, 128), (80, 100), (96, 128)]
    np.testing.assert_array_equal(mixed[2], one_by_one[2]["labels"])


def test_probabilities_sum_to_one_and_their_argmax_is_the_labels(seg, seg_images):
    result = seg.predict(seg_images[2], probabilities=True)
    labels, probs = result["labels"], result["probabilities"]
    assert labels.shape == (96, 128) and labels.dtype == np.int64
    assert probs.shape == (len(seg.class_names), 96, 128) == (6, 96, 128)
    assert probs.min() >= 0.0
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(axis=0), labels)
    np.testing.assert_array_equal(seg.predict(seg_images[2]), labels)


def test_probabilities_with_several_views_sum_to_one(seg_ckpt, seg_images):
    model = cbsa_dense.load(seg_ckpt, "cpu", scales=[0.75, 1.0], flip=True)
    result = model.predict(seg_images[0], probabilities=True)
    np.testing.assert_allclose(result["probabilities"].sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(result["probabilities"].argmax(axis=0), result["labels"])


def _legend_box(with_legend: np.ndarray, without: np.ndarray) -> tuple[int, int]:
    """(rows, columns) of the top-left box where the legend changed the picture."""
    changed = np.any(with_legend != without, axis=-1)
    assert changed.any(), "no legend was drawn"
    rows, cols = np.nonzero(changed)
    return int(rows.max()) + 1, int(cols.max()) + 1


def test_draw_leaves_the_background_as_it_is_and_adds_a_legend(seg, seg_images, tmp_path):
    image = seg_images[3]
    h, w = image.shape[:2]
    labels = np.full((h, w), seg.class_names.index("ground"), dtype=np.int64)   # demo_seg: no background class
    labels[: h // 2] = seg.class_names.index("sky")
    labels[h // 2:, w // 2:] = seg.class_names.index("disc")
    Image.fromarray(image).save(tmp_path / "scene.png")
    for given in (image, tmp_path / "scene.png"):
        picture = seg.draw(given, labels, background=["sky"])
        assert picture.shape == (h, w, 3) and picture.dtype == np.uint8
        plain = seg.draw(given, labels, background=["sky"], legend=False)
        rows, cols = _legend_box(picture, plain)
        assert rows < h and cols < w                                       # a box in the top-left corner
        assert np.any(picture[0, 0] != image[0, 0])                        # it starts at the corner
        outside = np.ones((h, w), dtype=bool)
        outside[:rows, :cols] = False
        background = (labels == seg.class_names.index("sky")) & outside
        assert background.any()
        np.testing.assert_array_equal(picture[background], image[background])
        painted = (labels != seg.class_names.index("sky")) & outside
        assert np.any(picture[painted] != image[painted])                  # the other classes are coloured
    everything = seg.draw(image, labels, background=[], legend=False)
    sky = labels == seg.class_names.index("sky")
    assert np.any(everything[sky] != image[sky])                           # [] paints every class


def test_draw_takes_the_probabilities_result_too(seg, seg_images):
    result = seg.predict(seg_images[0], probabilities=True)
    np.testing.assert_array_equal(seg.draw(seg_images[0], result), seg.draw(seg_images[0], result["labels"]))


# ------------------------------------------------------------------------------------------ detection
@pytest.fixture(scope="module")
def det_data(det_ckpt) -> Path:
    return det_ckpt.parents[4] / "data"


def _det(det_ckpt, **settings):
    """The detector with every candidate kept (a 2-step model scores below the head's 0.05 threshold), so
    that comparisons have boxes to compare."""
    model = cbsa_dense.load(det_ckpt, "cpu", **settings)
    model.task.model.head.score_thresh = 0.0
    return model


@pytest.fixture(scope="module")
def det(det_ckpt):
    return _det(det_ckpt)


@pytest.fixture(scope="module")
def det_images(det_data) -> list[np.ndarray]:
    return _images(det_data / "train", 4, size=(96, 112))


def _same_detections(a: dict, b: dict) -> None:
    assert len(a["boxes"]) > 0
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3)
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert a["class_names"] == b["class_names"]


def test_detection_keyword_and_attribute_take_effect_alike(det_ckpt, det, det_images):
    image = det_images[0]
    assert det.evaluation == DetEvaluation(mode="resize", image_size=128, native_scale=1.0)
    by_keyword = _det(det_ckpt, image_size=64)
    by_attribute = _det(det_ckpt)
    by_attribute.image_size = 64
    for model in (by_keyword, by_attribute):
        assert model.evaluation == DetEvaluation(mode="resize", image_size=64, native_scale=1.0)
        out = model.transform(image, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), [])
        assert tuple(out["image"].shape) == (3, 64, 64)
    assert tuple(det.transform(image, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), [])["image"].shape) == (3, 128, 128)
    keyword, attribute, stored = by_keyword.predict(image), by_attribute.predict(image), det.predict(image)
    _same_detections(keyword, attribute)
    assert not (len(keyword["boxes"]) == len(stored["boxes"]) and np.allclose(keyword["boxes"], stored["boxes"]))
    tiled = _det(det_ckpt, mode="tiled", tile_overlap=16)
    assert tiled.evaluation.tile == (128, 16) and tiled.mode == "tiled"
    assert tiled.predict(image)["boxes"].shape[1:] == (4,)


def test_detection_refuses_unknown_names(det_ckpt, det):
    with pytest.raises(ConfigError, match="'bogus'"):
        cbsa_dense.load(det_ckpt, "cpu", bogus=1)
    for name in ("eval_mode", "window"):
        with pytest.raises(ConfigError, match=repr(name)):
            setattr(det, name, "tiled")
    assert det.mode == "resize"


def test_detection_refuses_a_float_tensor_in_0_255(det, det_images):
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        det.predict(torch.from_numpy(det_images[0]).permute(2, 0, 1).float())


def test_detection_reads_gray_and_rgba_arrays_as_files(det, det_images, tmp_path):
    rgb = det_images[1]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = _rgba(rgb)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    _same_detections(det.predict(gray), det.predict(tmp_path / "gray.png"))
    _same_detections(det.predict(rgba), det.predict(str(tmp_path / "rgba.png")))


def test_detection_of_a_list_is_detection_one_by_one(det, det_images):
    one_by_one = [det.predict(image) for image in det_images]
    batched = det.predict(det_images)
    assert len(batched) == 4
    for single, many in zip(one_by_one, batched):
        _same_detections(single, many)
        assert single["boxes"].shape[1:] == (4,) and np.all(single["boxes"][:, 2:] >= single["boxes"][:, :2])


def test_detection_draw_is_an_image_with_a_legend(det, det_images):
    image = det_images[2]
    result = det.predict(image)
    picture = det.draw(image, result, score_threshold=0.0)
    assert picture.shape == image.shape and picture.dtype == np.uint8
    plain = det.draw(image, result, score_threshold=0.0, legend=False)
    rows, cols = _legend_box(picture, plain)
    assert rows < image.shape[0] and cols < image.shape[1]
    nothing = det.draw(image, result, score_threshold=1.01)                  # no box scores above: the photo
    np.testing.assert_array_equal(nothing, image)


def test_windowed_detection_is_native_with_attention_in_windows(det_ckpt, det_images):
    from cbsa_dense.layers.windows import WindowedAttention

    image = det_images[0]                                  # 96x112: 6x7 tokens at the demo's patch 16
    native = _det(det_ckpt, mode="native")
    whole = _det(det_ckpt, mode="windowed")                # windows of 128 px (8 tokens): the whole image
    assert whole.evaluation.describe().startswith("windowed: the image at its own size, one pass, attention in 128 px")
    _same_detections(whole.predict(image), native.predict(image))
    small = _det(det_ckpt, mode="windowed", image_size=48)  # 3-token windows: 2x2 of them
    windowed = small.predict(image)
    assert windowed["boxes"].shape[1:] == (4,) and len(windowed["boxes"]) > 0
    assert not (len(windowed["boxes"]) == len(native.predict(image)["boxes"])
                and np.allclose(windowed["boxes"], native.predict(image)["boxes"]))
    encoder = small.task.model.encoder
    assert not any(isinstance(block.attn, WindowedAttention) for block in encoder.blocks)   # restored after
