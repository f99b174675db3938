"""The evaluation protocol's one home (:mod:`cbsa_dense.tasks.eval_protocol`): each bad value is one line naming
the field and the value; detection fields resolve from the data; the tile and its overlap; the one-line
description; the stored form round-trips; the one transform builder; the check against how a model was trained;
changing fields refuses unknown ones by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cbsa_dense.errors import ConfigError
from cbsa_dense.tasks.eval_protocol import (
    DetEvaluation,
    SegEvaluation,
    check_against_training,
    eval_transform,
    evaluation_from,
    replace_fields,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def one_line_error(build, field: str, shown: str | tuple[str, ...]) -> str:
    """``build()`` raises a one-line ConfigError that names ``field`` and the value as ``shown`` (or one of
    several spellings of it)."""
    with pytest.raises(ConfigError) as caught:
        build()
    message = str(caught.value)
    assert "\n" not in message, message
    assert field in message, message
    assert any(s in message for s in ((shown,) if isinstance(shown, str) else shown)), message
    return message


# ------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("field, value, shown", [
    ("scale", [0, 512], "[0, 512]"),
    ("scale", [2048], "[2048]"),
    ("scale", [512.5, 256], "512.5"),
    ("scale", "big", "big"),
    ("scale", 512, "512"),
    ("window", [96, 0], "[96, 0]"),
    ("window", [96, 96, 96], "[96, 96, 96]"),
    ("stride", [-1, 32], "[-1, 32]"),
    ("scales", [], ("[]", "()")),
    ("scales", [1.0, 0.0], "0.0"),
    ("scales", [1.0, -0.5], "-0.5"),
    ("scales", ["big"], "big"),
    ("scales", None, "None"),
    ("scales", [float("nan")], "nan"),
    ("scales", "1.0", "'1.0'"),
    ("flip", "no", "'no'"),
    ("flip", None, "None"),
    ("window_batch", 0, "0"),
    ("window_batch", True, "True"),
    ("window_batch", 2.5, "2.5"),
])
def test_each_bad_segmentation_value_is_one_line_naming_field_and_value(field, value, shown):
    one_line_error(lambda: SegEvaluation(**{field: value}), field, shown)


def test_a_stride_larger_than_the_window_is_refused_naming_both():
    message = one_line_error(lambda: SegEvaluation(window=[32, 32], stride=[64, 16]), "stride", "64")
    assert "window" in message and "32" in message


@pytest.mark.parametrize("field, value, shown", [
    ("mode", "tile", "'tile'"),
    ("mode", "RESIZE", "'RESIZE'"),
    ("image_size", 0, "0"),
    ("image_size", -64, "-64"),
    ("image_size", 64.5, "64.5"),
    ("image_size", True, "True"),
    ("image_size", "64", "'64'"),
    ("native_scale", 0, "0"),
    ("native_scale", 9.0, "9.0"),
    ("native_scale", -1.0, "-1.0"),
    ("native_scale", True, "True"),
    ("native_scale", "2", "'2'"),
    ("max_detection_thresholds", [10, 1, 100], "[10, 1, 100]"),
    ("max_detection_thresholds", [1, 10], "[1, 10]"),
    ("max_detection_thresholds", [0, 10, 100], "[0, 10, 100]"),
    ("max_detection_thresholds", [1, 10, 100.5], "100.5"),
    ("max_detection_thresholds", 100, "100"),
])
def test_each_bad_detection_value_is_one_line_naming_field_and_value(field, value, shown):
    one_line_error(lambda: DetEvaluation(**{field: value}), field, shown)


@pytest.mark.parametrize("overlap", [-1, 32, 40, 8.5, True])
def test_a_tile_overlap_outside_zero_to_half_the_tile_is_refused(overlap):
    message = one_line_error(lambda: DetEvaluation(mode="tiled", image_size=64, tile_overlap=overlap),
                             "tile_overlap", repr(overlap))
    assert "32" in message                                     # the bound: image_size / 2


def test_valid_values_are_normalized_to_tuples_and_floats():
    seg = SegEvaluation(scale=[896, 504], window=[96, 64], stride=[48, 32], scales=[1, 1.5], flip=True)
    assert (seg.scale, seg.window, seg.stride, seg.scales, seg.flip) == ((896, 504), (96, 64), (48, 32),
                                                                         (1.0, 1.5), True)
    assert SegEvaluation(scale=None).scale is None and SegEvaluation().scale == (2048, 512)
    det = DetEvaluation(mode="native", image_size=64, native_scale=2, max_detection_thresholds=[1, 10, 300])
    assert det.native_scale == 2.0 and isinstance(det.native_scale, float)
    assert det.max_detection_thresholds == (1, 10, 300)
    assert DetEvaluation().max_detection_thresholds == (1, 10, 100)


def test_protocols_are_frozen_values():
    seg = SegEvaluation(window=[64, 64])
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.window = (32, 32)
    assert seg == SegEvaluation(window=(64, 64)) and hash(seg) == hash(SegEvaluation(window=(64, 64)))


# ------------------------------------------------------------------------------------------ resolve, tile
def test_resolve_fills_only_the_unset_detection_fields_from_the_data():
    unset = DetEvaluation(mode="tiled")
    assert unset.image_size is None and unset.native_scale is None
    resolved = unset.resolve(128, 2.0)
    assert (resolved.image_size, resolved.native_scale, resolved.mode) == (128, 2.0, "tiled")
    assert unset.resolve(128) == DetEvaluation(mode="tiled", image_size=128, native_scale=1.0)
    own = DetEvaluation(mode="native", image_size=96, native_scale=0.5)
    assert own.resolve(128, 2.0) == own                       # set fields are kept


def test_resolve_checks_a_set_overlap_against_the_data_tile():
    unresolved = DetEvaluation(mode="tiled", tile_overlap=40)  # no tile yet: nothing to check against
    assert unresolved.resolve(128).tile == (128, 40)
    one_line_error(lambda: unresolved.resolve(64), "tile_overlap", "40")


def test_tile_and_overlap():
    tiled = DetEvaluation(mode="tiled", image_size=128)
    assert tiled.overlap() == 32 and tiled.tile == (128, 32)          # default: a quarter of the tile
    assert DetEvaluation(mode="tiled", image_size=128, tile_overlap=0).tile == (128, 0)
    assert DetEvaluation(mode="tiled", image_size=128, tile_overlap=63).tile == (128, 63)
    assert DetEvaluation(mode="resize", image_size=128).tile is None
    assert DetEvaluation(mode="native", image_size=128, tile_overlap=16).tile is None
    message = one_line_error(lambda: DetEvaluation(mode="tiled").tile, "image_size", "not resolved")
    assert "\n" not in message


# ------------------------------------------------------------------------------------------ describe
def test_segmentation_describe_is_one_line_with_every_part():
    assert SegEvaluation().describe() == ("resize to (long, short) [2048, 512], keep ratio; whole image, "
                                          "scales [1.0], no flip")
    line = SegEvaluation(scale=None, window=[96, 96], stride=[64, 64], scales=[0.5, 1.0], flip=True).describe()
    assert line == "original size; sliding window 96x96, stride 64x64, scales [0.5, 1.0], with flip"
    assert "stride 64x64" in SegEvaluation(window=[96, 96]).describe()   # default stride: 2/3 of the window


def test_detection_describe_is_one_line_per_mode():
    assert DetEvaluation(image_size=128).describe() == ("resize: longest side to 128, zero-padded square; "
                                                        "max_detection_thresholds [1, 10, 100]")
    assert "the data's image_size" in DetEvaluation().describe()
    assert DetEvaluation(mode="native", image_size=128, native_scale=2.0).describe() == (
        "native: the image at its own size, scaled by 2, one pass; max_detection_thresholds [1, 10, 100]")
    assert DetEvaluation(mode="tiled", image_size=224, tile_overlap=96,
                         max_detection_thresholds=[1, 10, 300]).describe() == (
        "tiled: 224 px tiles overlapping by 96 px; max_detection_thresholds [1, 10, 300]")
    assert "a quarter of the tile" in DetEvaluation(mode="tiled").describe()
    for protocol in (DetEvaluation(), DetEvaluation(mode="tiled", image_size=64), SegEvaluation(scale=None)):
        assert "\n" not in protocol.describe()


# ------------------------------------------------------------------------------------------ to_dict
@pytest.mark.parametrize("protocol", [
    SegEvaluation(),
    SegEvaluation(scale=None, window=[96, 96], stride=[64, 64], scales=[0.75, 1.0, 1.25], flip=True,
                  window_batch=2),
    DetEvaluation(),
    DetEvaluation(mode="tiled", image_size=224, tile_overlap=96, native_scale=2.0,
                  max_detection_thresholds=[1, 10, 300]),
])
def test_to_dict_holds_plain_values_and_round_trips(protocol):
    stored = protocol.to_dict()
    assert set(stored) == {f.name for f in dataclasses.fields(protocol)}
    assert not any(isinstance(v, tuple) for v in stored.values())          # lists: YAML / JSON / torch.save
    assert type(protocol)(**stored) == protocol
    assert evaluation_from(type(protocol), stored) == protocol


def test_evaluation_from_refuses_an_unknown_field_and_the_other_kind():
    message = one_line_error(lambda: evaluation_from(SegEvaluation, {"window": [64, 64], "eval_scale": [1, 1]}),
                             "eval_scale", "SegEvaluation")
    assert "window" in message                                  # the settings it has
    one_line_error(lambda: evaluation_from(DetEvaluation, SegEvaluation()), "SegEvaluation", "DetEvaluation")
    assert evaluation_from(SegEvaluation, None) is None


# ------------------------------------------------------------------------------------------ eval_transform
def test_segmentation_transform_output_size_follows_scale():
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    resized = eval_transform(SegEvaluation(scale=(64, 48)), MEAN, STD)(image)["image"]
    assert resized.shape == (3, 32, 64)                     # min(64 / 200, 48 / 100) = 0.32
    enlarged = eval_transform(SegEvaluation(scale=(400, 300)), MEAN, STD)(image)["image"]
    assert enlarged.shape == (3, 200, 400)                 # min(400 / 200, 300 / 100) = 2
    kept = eval_transform(SegEvaluation(scale=None), MEAN, STD)(image)["image"]
    assert kept.shape == (3, 100, 200)
    np.testing.assert_allclose(kept, (image.transpose(2, 0, 1) / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_detection_transform_resize_vs_native():
    image = np.random.default_rng(0).integers(0, 256, (50, 100, 3), dtype=np.uint8)
    none = (np.zeros((0, 4)), np.zeros(0, dtype=np.int64), [])
    resize = eval_transform(DetEvaluation(mode="resize", image_size=64), MEAN, STD)(image, *none)
    assert tuple(resize["image"].shape) == (3, 64, 64)                        # longest side to 64, padded square
    assert tuple(resize["image_size"]) == (32, 64) and resize["scale"] == pytest.approx((0.64, 0.64))
    assert float(resize["image"][:, 32:].abs().max()) == 0.0                   # the zero padding
    native = eval_transform(DetEvaluation(mode="native", image_size=64, native_scale=1.0), MEAN, STD)(image, *none)
    assert tuple(native["image"].shape) == (3, 50, 100) and native["scale"] == (1.0, 1.0)
    tiled = eval_transform(DetEvaluation(mode="tiled", image_size=64), MEAN, STD)(image, *none)
    assert tuple(tiled["image"].shape) == (3, 50, 100)                         # tiles are cut by the task
    doubled = eval_transform(DetEvaluation(mode="native", image_size=64, native_scale=2.0), MEAN, STD)(image, *none)
    assert tuple(doubled["image"].shape) == (3, 100, 200) and doubled["scale"] == (2.0, 2.0)


def test_detection_transform_needs_a_resolved_image_size():
    one_line_error(lambda: eval_transform(DetEvaluation(), MEAN, STD), "image_size", "not resolved")


# ------------------------------------------------------------------------------------------ training check
def test_a_native_trained_detector_refuses_resize():
    message = one_line_error(lambda: check_against_training(DetEvaluation(mode="resize", image_size=64),
                                                            {"train_mode": "native"}, where="ckpt.ckpt"),
                             "resize", "native")
    assert "ckpt.ckpt" in message
    for mode in ("native", "tiled"):
        check_against_training(DetEvaluation(mode=mode, image_size=64), {"train_mode": "native"})
    for mode in ("resize", "native", "tiled"):
        check_against_training(DetEvaluation(mode=mode, image_size=64), {"train_mode": "resize"})
        check_against_training(DetEvaluation(mode=mode, image_size=64), {})
    check_against_training(SegEvaluation(), {"train_mode": "native"})


# ------------------------------------------------------------------------------------------ replace_fields
def test_replace_fields_changes_and_checks_values():
    seg = SegEvaluation(scale=None, window=[96, 96], stride=[64, 64])
    changed = replace_fields(seg, window=[48, 48], stride=[32, 32])
    assert (changed.window, changed.stride, changed.scale) == ((48, 48), (32, 32), None)
    assert seg.window == (96, 96)                                            # the original is unchanged
    one_line_error(lambda: replace_fields(seg, window=[0, 48]), "window", "[0, 48]")
    det = replace_fields(DetEvaluation(image_size=64), mode="tiled", tile_overlap=8)
    assert det.tile == (64, 8)


@pytest.mark.parametrize("protocol, name", [(SegEvaluation(), "eval_scale"), (DetEvaluation(), "eval_mode"),
                                            (SegEvaluation(), "bogus")])
def test_replace_fields_refuses_an_unknown_field_by_name(protocol, name):
    message = one_line_error(lambda: replace_fields(protocol, **{name: 1}), repr(name), type(protocol).__name__)
    assert all(f.name in message for f in dataclasses.fields(protocol))      # its settings are listed
