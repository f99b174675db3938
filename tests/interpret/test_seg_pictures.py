"""Segmentation pictures a person can read: predict overlays leave the background as the photo and name the
classes painted; label PNGs are what they were; validation pictures put ground truth beside prediction,
large enough to read."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cbsa_dense.callbacks.prediction_writer import PredictionWriter
from cbsa_dense.data.seg_labels import IGNORE_INDEX, default_palette, to_annotation, write_label_png
from cbsa_dense.interpret import seg_overlay
from cbsa_dense.interpret.det_overlay import PANEL_GAP, TITLE_BACKGROUND, title_size
from cbsa_dense.interpret.seg_overlay import draw_segmentation, ground_truth_and_prediction

NAMES = ["background", "car", "tree", "road"]
PALETTE = default_palette(len(NAMES))


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blend(photo: np.ndarray, colour, alpha: float) -> np.ndarray:
    return (photo.astype(np.float32) * (1 - alpha) + np.asarray(colour, np.float32) * alpha).round().astype(np.uint8)


@pytest.fixture
def legends(monkeypatch) -> list[list[str]]:
    """The class names of every legend drawn (``draw_segmentation`` draws through ``draw_legend``)."""
    seen, draw_legend = [], seg_overlay.draw_legend

    def spy(image, entries):
        seen.append([name for name, _ in entries])
        return draw_legend(image, entries)

    monkeypatch.setattr(seg_overlay, "draw_legend", spy)
    return seen


def _predict(tmp_path: Path, labels: list[np.ndarray], photos: list[np.ndarray], datamodule_names=NAMES,
             data_info=None, reduce_zero_label: bool = False, mask_palette=None, alpha: float = 0.5) -> Path:
    """Run the predict writer's segmentation part on ``labels`` of ``photos`` (written as PNG files)."""
    items = []
    for i, (pred, photo) in enumerate(zip(labels, photos)):
        path = tmp_path / "photos" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(path)
        items.append({"path": str(path), "labels": pred})
    out = tmp_path / "predictions"
    datamodule = SimpleNamespace(class_names=datamodule_names, palette=PALETTE, mask_palette=mask_palette,
                                 reduce_zero_label=reduce_zero_label)
    trainer = SimpleNamespace(datamodule=datamodule, global_rank=0)
    task = SimpleNamespace(output_dir=lambda: out, num_classes=len(NAMES), overlay_alpha=alpha,
                           data_info=data_info or {})
    PredictionWriter()._segmentation_files(trainer, task, items)
    return out


def _legend_box(picture: np.ndarray, plain: np.ndarray) -> tuple[int, int]:
    """(height, width) of the top-left region where ``picture`` differs from ``plain`` (the legend)."""
    ys, xs = np.nonzero((picture != plain).any(axis=2))
    assert ys.min() == 0 and xs.min() == 0, "the legend sits in the top-left corner"
    return int(ys.max()) + 1, int(xs.max()) + 1


def test_predict_overlay_leaves_the_background_as_the_photo_and_paints_the_others(tmp_path, legends):
    h, w = 240, 320
    photo = _photo(h, w)
    pred = np.zeros((h, w), np.int64)            # background everywhere ...
    pred[120:, 160:] = 1                         # ... a car bottom right
    pred[150:200, 20:100] = 3                    # ... and a road bottom left ("tree" absent)
    out = _predict(tmp_path, [pred], [photo], alpha=0.4)
    picture = np.asarray(Image.open(out / "overlays" / "img0.png").convert("RGB"))
    assert picture.shape == photo.shape, "the overlay keeps the photo's size"

    assert legends == [["car", "road"]], "the legend names exactly the painted classes present, largest first"
    lh, lw = _legend_box(picture, draw_segmentation(photo, pred, NAMES, PALETTE, 0.4, legend=False))
    assert lh < h // 3 and lw < w // 2
    outside = np.ones((h, w), bool)
    outside[:lh, :lw] = False
    background = (pred == 0) & outside
    assert background.sum() > h * w // 3
    assert (picture[background] == photo[background]).all(), "background pixels stay exactly as the photo"
    for cls in (1, 3):
        where = pred == cls
        assert (picture[where] == _blend(photo[where], PALETTE[cls], 0.4)).all(), f"{NAMES[cls]} painted at alpha"
        assert (picture[where] != photo[where]).any()


def test_predict_overlay_names_from_the_checkpoint_when_the_data_has_none(tmp_path, legends):
    pred = np.full((64, 96), 2, np.int64)
    info = {"class_names": ["void", "a", "b", "c"]}
    _predict(tmp_path, [pred], [_photo(64, 96)], datamodule_names=None, data_info=info)
    assert legends == [["b"]]
    pred[:, :10] = 0                                             # "void": not painted, not in the legend
    _predict(tmp_path, [pred], [_photo(64, 96)], datamodule_names=None, data_info=info)
    assert legends[-1] == ["b"]


@pytest.mark.parametrize("convention", ["plain", "reduce_zero_label", "colour masks"])
def test_label_pngs_are_unchanged(tmp_path, convention):
    """The label PNGs are written as before the overlays changed: same bytes as the writer's label code."""
    pred = np.random.default_rng(1).integers(0, len(NAMES), (30, 40)).astype(np.int64)
    reduce_zero = convention == "reduce_zero_label"
    mask_palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8) \
        if convention == "colour masks" else None
    out = _predict(tmp_path / "run", [pred], [_photo(30, 40)], reduce_zero_label=reduce_zero,
                   mask_palette=mask_palette)
    expected = tmp_path / "expected.png"
    if mask_palette is not None:
        Image.fromarray(mask_palette[pred]).save(expected)
    else:
        png_palette = np.concatenate([np.zeros((1, 3), np.uint8), PALETTE]) if reduce_zero else PALETTE
        write_label_png(expected, to_annotation(pred, reduce_zero), png_palette)
    assert (out / "labels" / "img0.png").read_bytes() == expected.read_bytes()
    values = np.asarray(Image.open(out / "labels" / "img0.png"))
    if mask_palette is None:
        assert (values == pred + (1 if reduce_zero else 0)).all()


def _panels(picture: np.ndarray, h: int, w: int, factor: int) -> tuple[np.ndarray, np.ndarray, int]:
    ph, pw = h * factor, w * factor
    strip = title_size(ph, pw) + 2 * max(2, title_size(ph, pw) // 3)
    return picture[strip:strip + ph, :pw], picture[strip:strip + ph, pw + PANEL_GAP:], strip


def test_ground_truth_beside_prediction_enlarged_with_one_legend(legends):
    h, w = 24, 32
    photo = _photo(h, w, seed=3)
    gt = np.full((h, w), 1, np.int64)
    gt[:, :4] = IGNORE_INDEX                     # unlabelled (reduce_zero_label's 0): never painted
    pred = np.full((h, w), 2, np.int64)
    picture = ground_truth_and_prediction(photo, gt, pred, NAMES, PALETTE, alpha=0.6, min_side=512)
    factor = 16                                  # ceil(512 / 32)
    assert picture.shape[1] == 2 * w * factor + PANEL_GAP and max(picture.shape[:2]) >= 512
    left, right, strip = _panels(picture, h, w, factor)
    big = np.repeat(np.repeat(photo, factor, 0), factor, 1)
    assert (left == draw_segmentation(big, np.repeat(np.repeat(gt, factor, 0), factor, 1), NAMES, PALETTE, 0.6,
                                      legend=False)).all(), "ground truth on the left"
    assert (right == _blend(big, PALETTE[2], 0.6)).all(), "prediction on the right"
    assert (left[:, : 4 * factor] == big[:, : 4 * factor]).all(), "ignored pixels stay as the photo"
    assert legends == [], "no legend over the panels"
    legend = picture[strip + h * factor:]
    assert legend.shape[0] >= title_size(h * factor, w * factor), "one legend strip below the panels"
    for cls in (1, 2):
        assert (legend == PALETTE[cls]).all(axis=2).sum() > 50, f"{NAMES[cls]}'s swatch in the legend"
    for cls in (0, 3):
        assert not (legend == PALETTE[cls]).all(axis=2).any(), f"{NAMES[cls]} is absent from the legend"
    assert (picture[strip:strip + h * factor, w * factor:w * factor + PANEL_GAP] == TITLE_BACKGROUND).all()

    alone = ground_truth_and_prediction(photo, None, pred, NAMES, PALETTE, min_side=0)
    assert alone.shape[1] == w, "no ground truth: the prediction panel alone, not enlarged with min_side=0"


class _Segmenter(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("the task's predict_scores is used, not the bare model")


def test_validation_picture_puts_ground_truth_left_of_the_prediction(tmp_path):
    """The callback on a batch of small photos: two titled panels at least 512 px long, GT on the left,
    the task's prediction (``predict_scores``, at the original size) on the right, the photo files' pixels."""
    from cbsa_dense.callbacks import PredictionImages

    h, w, count = 48, 64, 3
    photos, paths = [_photo(h, w, seed=i) for i in range(count)], []
    for i, photo in enumerate(photos):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(photo).save(paths[-1])
    masks = torch.full((count, h, w), 1, dtype=torch.long)
    masks[:, :, w // 2:] = 3
    batch = {"image": torch.zeros(count, 3, h // 2, w // 2),       # the model's input: another size
             "mask": masks, "path": [str(p) for p in paths], "orig_size": [(h, w)] * count}

    def predict_scores(b):
        assert b["orig_size"] == [(h, w)] * 2, "only the images drawn are predicted"
        scores = torch.zeros(len(b["image"]), len(NAMES), h, w)
        scores[:, 2] = 1.0                                           # "tree" everywhere
        return list(scores)

    task = SimpleNamespace(model=_Segmenter(), predict_scores=predict_scores, num_classes=len(NAMES),
                           data_info={}, device=torch.device("cpu"))
    datamodule = SimpleNamespace(mean=(0.5,) * 3, std=(0.5,) * 3, class_names=NAMES, palette=PALETTE)
    trainer = SimpleNamespace(datamodule=datamodule, logger=None, loggers=[], default_root_dir=str(tmp_path),
                              current_epoch=0, global_step=0)
    written = PredictionImages(num_images=2).draw(trainer, task, batch)
    assert [p.name for p in written] == ["epoch000_0.png", "epoch000_1.png"]
    factor = 8                                                       # ceil(512 / 64)
    for path, photo in zip(written, photos):
        picture = np.asarray(Image.open(path).convert("RGB"))
        assert picture.shape[1] == 2 * w * factor + PANEL_GAP and picture.shape[1] // 2 >= 512
        left, right, _ = _panels(picture, h, w, factor)
        big = np.repeat(np.repeat(photo, factor, 0), factor, 1)
        half = w * factor // 2
        assert (left[:, :half] == _blend(big[:, :half], PALETTE[1], 0.6)).all(), "ground truth on the left"
        assert (left[:, half:] == _blend(big[:, half:], PALETTE[3], 0.6)).all()
        assert (right == _blend(big, PALETTE[2], 0.6)).all(), "prediction on the right"
