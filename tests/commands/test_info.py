"""``cbsa-dense info``: parameter counts and GFLOPs, the paper configs' decoder GFLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cbsa_dense.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# The paper's decoder FLOPs (cbsa-method.md, sections 3 and 5), worked out by hand, not by the code under test.
# A CBT decoder layer runs CBSA on n = patches + 150 class tokens of width d, with 3 heads x 100 (D = 300) and
# m = 10 x 10 = 100 representatives: MACs = 2*n*d*D + 3*m*n*D + 2*m^2*D; FLOPs = 2 x MACs.
#   tiny  (d 192, crop 512: 32x32 + 150 = 1174 tokens, 3 layers):
#         135,244,800 + 105,660,000 + 6,000,000 = 246,904,800 MACs a layer -> 1,481,428,800 FLOPs
#   small (d 384, 1174 tokens, 3 layers): 270,489,600 + 105,660,000 + 6,000,000 = 382,149,600 -> 2,292,897,600
#   base  (d 768, 1174 tokens, 6 layers): 540,979,200 + 105,660,000 + 6,000,000 = 652,639,200 -> 7,831,670,400
#   large (d 1024, crop 640: 40x40 + 150 = 1750 tokens, 9 layers):
#         1,075,200,000 + 157,500,000 + 6,000,000 = 1,238,700,000 -> 22,296,600,000
# The final mask product (patches . classes^T, outside the decoder layers): 2 x patches x d x 150 FLOPs.
# name: (crop, decoder FLOPs, mask-product FLOPs, the paper's decoder GFLOPs)
PAPER = {"tiny": (512, 1_481_428_800, 2 * 1024 * 192 * 150, 1.5),
         "small": (512, 2_292_897_600, 2 * 1024 * 384 * 150, 2.3),
         "base": (512, 7_831_670_400, 2 * 1024 * 768 * 150, 7.8),
         "large": (640, 22_296_600_000, 2 * 1600 * 1024 * 150, 22.3)}


def info(capsys, *args: str) -> dict:
    assert main(["info", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_configs_decoder_gflops(capsys, name):
    crop, decoder_flops, mask_flops, paper = PAPER[name]
    out = info(capsys, "--config", str(CONFIGS / "paper" / f"ade20k_cbt_{name}.yaml"))
    assert out["image_size"] == [crop, crop]
    assert out["head_gflops"] == pytest.approx(decoder_flops / 1e9, rel=1e-9)
    assert round(out["head_gflops"], 1) == paper
    assert out["head_gflops_total"] - out["head_gflops"] == pytest.approx(mask_flops / 1e9, rel=1e-6)
    assert out["gflops"] == pytest.approx(out["encoder_gflops"] + out["head_gflops_total"], rel=1e-9)
    assert out["params"] == out["encoder_params"] + out["head_params"]


def test_paper_small_encoder_by_hand(capsys):
    """The softmax ViT-S/16 encoder of CBT-S at 512 x 512, counted by hand (cbsa-method.md section 3: MHSA
    4*N*d*D + 2*N^2*D MACs; the MLP 2 x N*d*4d; the patch embedding a 16x16x3 -> 384 product per patch).
    N = 1 + 32*32 = 1025 tokens, d = D = 384, 12 blocks:
      attention 604,569,600 + 806,880,000, MLP 1,209,139,200 = 2,620,588,800 MACs a block, x 12;
      + patch embedding 1024 x 768 x 384 = 301,989,888 -> 31,749,055,488 MACs = 63,498,110,976 FLOPs.
    Parameters: patch embedding 295,296, CLS 384, position 1025 x 384 = 393,600, blocks 12 x 1,774,464
    (2 norms 1,536, qkv 443,520, proj 147,840, fc1 591,360, fc2 590,208), final norm 768 -> 21,983,616."""
    out = info(capsys, "--config", str(CONFIGS / "paper" / "ade20k_cbt_small.yaml"))
    assert out["encoder_gflops"] == pytest.approx(63_498_110_976 / 1e9, rel=1e-9)
    assert out["encoder_params"] == 21_983_616


def test_other_seg_configs_and_image_size(capsys):
    out = info(capsys, "--config", str(CONFIGS / "seg_ade20k.yaml"))
    assert out["image_size"] == [512, 512] and 20e6 < out["encoder_params"] < 25e6       # ViT-S width
    small = info(capsys, "--config", str(CONFIGS / "demo_seg.yaml"), "--image-size", "96", "128")
    big = info(capsys, "--config", str(CONFIGS / "demo_seg.yaml"), "--image-size", "192", "256")
    assert small["image_size"] == [96, 128] and small["params"] == big["params"]
    assert 3.5 < big["encoder_gflops"] / small["encoder_gflops"] < 4.5                # ~linear in tokens
    assert info(capsys, "--config", str(CONFIGS / "seg_custom.yaml"))["head_params"] > 0


def test_attention_macs_of_the_query_broadcast_and_the_local_term():
    """Worked out by hand for d = D = 384, 6 heads, m = 36, a 12x12 patch grid plus a CLS token (N = 145)."""
    from cbsa_dense.cli.commands.info import attention_macs
    from cbsa_dense.layers import CBSAAttention

    n, d, m, k2, hw = 145, 384, 36, 9, 144
    qkv_proj = 4 * n * d * d                                   # qkv (3 N d D) + proj (N D d)
    query = CBSAAttention(d, 6, grid=(6, 6), variant="qkv", broadcast="query", local_kernel=3)
    assert attention_macs(query, n, (12, 12)) == qkv_proj + 4 * m * n * d + k2 * hw * d == 94_040_064
    transpose = CBSAAttention(d, 6, grid=(6, 6), variant="qkv", local_kernel=3)
    expected = qkv_proj + 3 * m * n * d + 2 * m * m * d + k2 * hw * d + n * d * d
    assert attention_macs(transpose, n, (12, 12)) == expected == 114_412_032
