"""``cbsa-dense info``: parameter counts and GFLOPs, the paper configs' decoder GFLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbsa_dense.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# name: (encoder width, decoder layers, crop, the paper's decoder GFLOPs)
PAPER = {"tiny": (192, 3, 512, 1.5), "small": (384, 3, 512, 2.3), "base": (768, 6, 512, 7.8),
         "large": (1024, 9, 640, 22.3)}


def info(capsys, *args: str) -> dict:
    assert main(["info", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_configs_decoder_gflops(capsys, name):
    d, layers, crop, paper = PAPER[name]
    out = info(capsys, "--config", str(CONFIGS / "paper" / f"ade20k_cbt_{name}.yaml"))
    assert out["image_size"] == [crop, crop]
    n = (crop // 16) ** 2 + 150
    formula = 2 * layers * (2 * n * d * 300 + 3 * 100 * n * 300 + 2 * 100 ** 2 * 300) / 1e9   # spec, section 5
    assert out["head_gflops"] == pytest.approx(formula, rel=1e-9)
    assert round(out["head_gflops"], 1) == paper
    assert out["head_gflops_total"] > out["head_gflops"]          # + the final patch-class product
    assert out["gflops"] == pytest.approx(out["encoder_gflops"] + out["head_gflops_total"], rel=1e-9)
    assert out["params"] == out["encoder_params"] + out["head_params"]


def test_other_seg_configs_and_image_size(capsys):
    out = info(capsys, "--config", str(CONFIGS / "seg_ade20k.yaml"))
    assert out["image_size"] == [512, 512] and 20e6 < out["encoder_params"] < 25e6       # ViT-S width
    small = info(capsys, "--config", str(CONFIGS / "demo_seg.yaml"), "--image-size", "96", "128")
    big = info(capsys, "--config", str(CONFIGS / "demo_seg.yaml"), "--image-size", "192", "256")
    assert small["image_size"] == [96, 128] and small["params"] == big["params"]
    assert 3.5 < big["encoder_gflops"] / small["encoder_gflops"] < 4.5                # ~linear in tokens
    assert info(capsys, "--config", str(CONFIGS / "seg_custom.yaml"))["head_params"] > 0
