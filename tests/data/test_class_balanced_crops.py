"""``class_balanced_crops``: a rare class at an image border gets into the training crops as often as the others."""

from __future__ import annotations

import numpy as np
import pytest

from cbsa_dense.data.seg_transforms import SegTrainTransform
from cbsa_dense.errors import ConfigError


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """300x200 image: class 0 left, class 1 right, class 2 a 12x12 patch at the right border (0.24 %)."""
    mask = np.zeros((200, 300), np.int64)
    mask[:, 150:] = 1
    mask[100:112, 288:] = 2
    image = np.stack([mask * 80, 255 - mask * 80, np.full_like(mask, 90)], axis=-1).astype(np.uint8)
    return image, mask


def _share_with_rare_class(fraction: float, crops: int = 300) -> float:
    transform = SegTrainTransform(crop_size=(64, 64), scale=(300, 200), ratio_range=(1.0, 1.0), flip_prob=0.0,
                                  photometric=False, class_balanced_crops=fraction)
    transform.set_random_seed(0)
    image, mask = _scene()
    return float(np.mean([(transform(image, mask)["mask"] == 2).any() for _ in range(crops)]))


def test_crops_centred_on_a_class_drawn_uniformly_find_the_rare_class():
    plain, balanced, half = _share_with_rare_class(0.0), _share_with_rare_class(1.0), _share_with_rare_class(0.5)
    assert plain < 0.08                        # random crops: at most the few that reach the border patch
    assert balanced > 0.3                      # one class in three is drawn: at least a third of the crops
    assert plain < half < balanced


def test_the_crop_stays_inside_the_image_and_keeps_its_size():
    transform = SegTrainTransform(crop_size=(64, 64), scale=(300, 200), ratio_range=(1.0, 1.0),
                                  class_balanced_crops=1.0)
    _, mask = _scene()
    for _ in range(50):
        y0, y1, x0, x1 = transform.random_crop_box(mask)
        assert 0 <= y0 and y1 <= 200 and 0 <= x0 and x1 <= 300 and (y1 - y0, x1 - x0) == (64, 64)
    assert transform.class_centred_box(np.full((20, 20), 255)) is None          # nothing labelled: random crop


@pytest.mark.parametrize("value", [-0.1, 1.5, True])
def test_a_bad_fraction_is_one_line(value):
    with pytest.raises(ConfigError, match=rf"class_balanced_crops={value!r} is invalid: give a fraction in \[0, 1\]"):
        SegTrainTransform(class_balanced_crops=value)
