"""Images are read exactly as a viewer shows them (issue #10, class 2), by one reader (``read_image``):
EXIF orientation, high bit depths, every PIL mode; bombs, corrupt files, thin images and invalid
transform settings fail (or work) with a one-line message naming the file or the setting.

Inputs are written by PIL from the formats' own structures (EXIF tags, 16-bit arrays, PNG chunks), not
by this project's modules."""

from __future__ import annotations

import csv
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cbsa_dense.data.seg_dataset import SegDataset
from cbsa_dense.data.seg_labels import read_image, read_mask
from cbsa_dense.data.seg_transforms import SegEvalTransform, SegTrainTransform
from cbsa_dense.errors import ConfigError, DataError
from tests.conftest import cli_user_error

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ORIENTATION = 0x0112
RED, GREEN = (255, 0, 0), (0, 255, 0)


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- helpers
def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[ORIENTATION] = orientation
    return tags


def quadrant_image(h: int = 32, w: int = 48) -> np.ndarray:
    """Stored pixels: red top-left quadrant, green elsewhere (blocky, so JPEG keeps the colours)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = GREEN
    image[: h // 2, : w // 2] = RED
    return image


def is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[1] < 60


def make_dataset(root: Path, n: int = 2, size: tuple[int, int] = (24, 40)) -> Path:
    """``root/images/{train,val}/*.png``, ``root/masks/{train,val}/*.png``, ``root/classes.txt`` (3 classes)."""
    h, w = size
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.zeros((h, w), np.uint8)
            label[:, w // 3:] = 1
            label[h // 2:, 2 * w // 3:] = 2
            image = np.stack([label * 100, 255 - label * 100, np.full_like(label, 90)], axis=-1).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{split}{i}.png")
            Image.fromarray(label, mode="L").save(root / "masks" / split / f"{split}{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def cli_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    """A tiny ``seg_custom.yaml`` fit on ``root``'s explicit folders (1 step, no validation run)."""
    enc = "--model.init_args.encoder.init_args."
    head = "--model.init_args.head.init_args."
    return ["fit", "--config", str(CONFIGS / "seg_custom.yaml"),
            "--data.init_args.train_images", str(root / "images" / "train"),
            "--data.init_args.train_masks", str(root / "masks" / "train"),
            "--data.init_args.val_images", str(root / "images" / "val"),
            "--data.init_args.val_masks", str(root / "masks" / "val"),
            "--data.init_args.class_names", str(root / "classes.txt"),
            "--data.init_args.crop_size", "[32, 32]", "--data.init_args.scale", "[128, 32]",
            "--model.init_args.evaluation.scale", "[128, 32]", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0",
            f"{enc}img_size", "32", f"{enc}patch_size", "8", f"{enc}embed_dim", "32", f"{enc}depth", "1",
            f"{enc}num_heads", "2", f"{head}n_layers", "1",
            "--model.init_args.evaluation.window", "[32, 32]",
            "--model.init_args.evaluation.stride", "[24, 24]",
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.callbacks", "[]", *extra]


def fit_ok(argv: list[str]) -> None:
    from cbsa_dense.cli import main

    assert main(argv) == 0


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (8-bit grayscale) declaring width x height, per the PNG spec."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------- EXIF orientation
def test_exif_orientation_3_is_read_upside_down_as_a_viewer_shows(tmp_path):
    path = tmp_path / "phone.jpg"
    Image.fromarray(quadrant_image()).save(path, exif=exif(3), quality=95)
    image = read_image(path)
    assert image.shape == (32, 48, 3)
    assert is_red(image[-1, -1]) and not is_red(image[0, 0])     # rotated 180: red quadrant bottom-right


def test_exif_orientation_6_and_8_turn_the_image(tmp_path):
    for orientation, red_corner in ((6, (0, -1)), (8, (-1, 0))):
        path = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(quadrant_image()).save(path, exif=exif(orientation), quality=95)
        image = read_image(path)
        assert image.shape == (48, 32, 3)                           # displayed portrait
        # 6: the viewer rotates 90 deg clockwise (stored top-left -> top-right); 8: counter-clockwise
        assert is_red(image[red_corner]), orientation
        assert sum(is_red(image[c]) for c in ((0, 0), (0, -1), (-1, 0), (-1, -1))) == 1


def test_exif_rotated_image_trains_with_its_displayed_mask_through_the_cli(tmp_path, capsys):
    """An Orientation=6 photo whose mask was drawn on the displayed (portrait) picture, as annotation
    tools show it: before, the mask was blamed for a size mismatch."""
    root = make_dataset(tmp_path / "data")
    stored = np.zeros((24, 40, 3), np.uint8)                          # stored landscape ...
    Image.fromarray(stored).save(root / "images" / "train" / "train0.jpg", exif=exif(6))
    (root / "images" / "train" / "train0.png").unlink()
    Image.fromarray(np.ones((40, 24), np.uint8), mode="L").save(root / "masks" / "train" / "train0.png")
    sample = SegDataset([(root / "images" / "train" / "train0.jpg", root / "masks" / "train" / "train0.png")],
                        lambda i, m: {"image": i, "mask": m}, num_classes=3)[0]
    assert tuple(sample["orig_size"]) == (40, 24)                     # ... displayed portrait
    fit_ok(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"))


def test_mask_in_the_stored_orientation_is_explained(tmp_path):
    image = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(image, exif=exif(6))
    mask = tmp_path / "a.png"
    Image.fromarray(np.zeros((24, 40), np.uint8), mode="L").save(mask)
    with pytest.raises(DataError, match=r"a\.png is 40x24 \(WxH\) but image .*a\.jpg is 24x40 as displayed "
                                        r"\(its EXIF orientation 6 .*save the mask in the orientation"):
        SegDataset([(image, mask)], lambda i, m: {"image": i, "mask": m}, num_classes=3)[0]


# ---------------------------------------------------------------------------- bit depths and modes
def test_16bit_png_gradient_keeps_its_gradient(tmp_path):
    gradient = np.tile(np.linspace(0, 65535, 1024).astype(np.uint16), (4, 1))
    path = tmp_path / "g16.png"
    Image.fromarray(gradient).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (4, 1024, 3)
    row = image[0, :, 0].astype(int)
    assert (np.diff(row) >= 0).all()                                  # monotone
    assert len(np.unique(row)) == 256                                 # every 8-bit level, none clipped
    assert row[0] == 0 and row[-1] == 255 and (row == 255).mean() < 0.01
    assert (image[..., 0] == image[..., 2]).all()                     # gray stays gray


def test_16bit_big_endian_tiff_32bit_int_and_float_images(tmp_path):
    gradient = np.linspace(0, 65535, 300)
    cases = {
        "big.tif": (gradient.astype(">u2")[None], "I;16B"),
        "int32.tif": (gradient.astype(np.int32)[None], "I"),
        "float01.tif": ((gradient / 65535).astype(np.float32)[None], "F"),
        "float_wide.tif": ((gradient / 65535 * 4000 - 1000).astype(np.float32)[None], "F"),   # own range
    }
    for name, (array, mode) in cases.items():
        Image.fromarray(array).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode == mode, name
        row = read_image(tmp_path / name)[0, :, 0].astype(int)
        assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 200, name
        assert row[0] == 0 and row[-1] == 255, name


def test_12bit_data_in_16bit_is_scaled_by_the_dtype_range(tmp_path):
    """Documented rule: 16-bit data by the type's range (as viewers show it), not stretched per image."""
    Image.fromarray(np.full((2, 2), 4095, np.uint16)).save(tmp_path / "dim.png")
    assert read_image(tmp_path / "dim.png")[0, 0, 0] == round(4095 * 255 / 65535)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "RGB"])
def test_every_mode_gives_rgb_uint8(tmp_path, mode):
    rgb = Image.fromarray(quadrant_image())
    image = rgb.convert(mode) if mode != "P" else rgb.quantize(4)
    path = tmp_path / f"x_{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    if mode in ("P", "RGBA", "CMYK", "RGB"):
        assert is_red(out[0, 0]) and not is_red(out[-1, -1])


# ------------------------------------------------------------------------- bombs, corrupt, truncated
def test_decompression_bomb_header_is_a_data_error_naming_file_and_pixels(tmp_path):
    warn_size = tmp_path / "big.png"                     # above MAX_IMAGE_PIXELS (PIL warns)
    side = int(Image.MAX_IMAGE_PIXELS ** 0.5) + 10
    warn_size.write_bytes(png_header_only(side, side))
    with pytest.raises(DataError, match=rf"image .*big\.png declares {side * side} pixels, above the "
                                        r"decompression-bomb limit"):
        read_image(warn_size)
    error_size = tmp_path / "bomb.png"                   # above 2 x MAX_IMAGE_PIXELS (PIL raises)
    error_size.write_bytes(png_header_only(60000, 60000))
    with pytest.raises(DataError, match=r"image .*bomb\.png declares 3600000000 pixels"):
        read_image(error_size)
    with pytest.raises(DataError, match=r"mask .*bomb\.png declares 3600000000 pixels"):
        read_mask(error_size, num_classes=3)


def test_decompression_bomb_through_the_cli(tmp_path, capsys):
    root = make_dataset(tmp_path / "data")
    (root / "images" / "train" / "train1.png").write_bytes(png_header_only(60000, 60000))
    line = cli_user_error(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"), capsys)
    assert "train1.png declares 3600000000 pixels" in line and "downscale" in line


def test_corrupt_image_through_the_cli(tmp_path, capsys):
    root = make_dataset(tmp_path / "data")
    (root / "images" / "train" / "train1.png").write_bytes(b"not a png at all")
    line = cli_user_error(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"), capsys)
    assert "cannot read image" in line and "train1.png" in line and "replace or remove it" in line


def test_truncated_image_is_a_data_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[:300])
    with pytest.raises(DataError, match=r"(?i)cannot read image .*cut\.jpg: .*truncated"):
        read_image(path)


# ----------------------------------------------------------------------- thin images, bad settings
def test_thin_images_are_resized_to_at_least_one_pixel_and_padded():
    """An 8000 x 10 image at a small scale rounded its short side to 0 and crashed in cv2.resize."""
    train = SegTrainTransform(crop_size=(32, 32), scale=(96, 40), ratio_range=(0.5, 2.0))
    for hw in ((10, 8000), (8000, 10), (1, 1)):
        image, mask = np.full((*hw, 3), 80, np.uint8), np.ones(hw, np.int64)
        for _ in range(3):
            out = train(image, mask)
            assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (32, 32)
            assert (out["mask"] == 1).any()                           # content kept, rest padded with 255
        assert min(SegEvalTransform((96, 40))(image)["image"].shape[1:]) >= 1


def test_thin_image_trains_and_validates_through_the_cli(tmp_path):
    root = make_dataset(tmp_path / "data")
    for split in ("train", "val"):
        Image.fromarray(np.full((10, 8000, 3), 90, np.uint8)).save(root / "images" / split / f"{split}0.png")
        Image.fromarray(np.ones((10, 8000), np.uint8), mode="L").save(root / "masks" / split / f"{split}0.png")
    fit_ok(cli_args(root, tmp_path, "--trainer.fast_dev_run", "true"))


@pytest.mark.parametrize("setting, value, message", [
    ("ratio_range", "[2.0, 0.5]", r"ratio_range=\(2\.0, 0\.5\) is invalid: need 0 < low <= high"),
    ("crop_size", "[0, 32]", r"crop_size=\(0, 32\) is invalid: give two positive integers"),
])
def test_invalid_transform_settings_are_config_errors_through_the_cli(tmp_path, capsys, setting, value, message):
    root = make_dataset(tmp_path / "data")
    line = cli_user_error(cli_args(root, tmp_path, f"--data.init_args.{setting}", value,
                                   "--trainer.fast_dev_run", "true"), capsys)
    assert re.search(message, line), line


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio_range": (1.5, 1.0)}, r"ratio_range=\(1\.5, 1\.0\) is invalid: need 0 < low <= high"),
    ({"ratio_range": (0.0, 1.0)}, r"ratio_range=\(0\.0, 1\.0\) is invalid"),
    ({"scale": (-128, 32)}, r"scale=\(-128, 32\) is invalid: give two positive integers"),
    ({"crop_size": (32,)}, r"crop_size=\(32,\) is invalid"),
    ({"evaluation": {"scale": (128, 0)}}, r"evaluation scale=\[128, 0\] is invalid"),
    ({"cat_max_ratio": 0}, r"cat_max_ratio=0 is invalid: give a fraction in \(0, 1\]"),
    ({"std": (0.5, 0.0, 0.5)}, r"std=\(0\.5, 0\.0, 0\.5\) is invalid"),
    ({"batch_size": 0}, r"batch_size=0 is invalid"),
])
def test_invalid_settings_fail_at_datamodule_construction(kwargs, message):
    from cbsa_dense.data.seg_datamodule import SegDataModule

    with pytest.raises(ConfigError, match=message):
        SegDataModule(num_classes=3, **kwargs)


def test_fit_on_a_clean_folder_dataset_still_runs(tmp_path):
    root = make_dataset(tmp_path / "data")
    fit_ok(cli_args(root, tmp_path, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"))
    rows = list(csv.DictReader(next((tmp_path / "runs").rglob("metrics.csv")).open()))
    assert any(r.get("train_all_ignored_batches") == "0.0" for r in rows)
