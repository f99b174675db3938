import json

import pytest

from cbsa_dense.benchmark.encoder import build_encoder, forward_gflops
from cbsa_dense.cli import main as cli_main


def test_encoder_command_prints_records(tmp_path, capsys):
    assert cli_main(["benchmark", "encoder", "--image-size", "32", "64", "--dim", "32", "--depth", "2",
                     "--heads", "2", "--dtype", "float32", "--warmup", "0", "--repeats", "1", "--json",
                     "--out-dir", str(tmp_path)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["attention"], r["image_size"]) for r in records] == [
        ("cbsa", 32), ("softmax", 32), ("cbsa", 64), ("softmax", 64)]
    for r in records:
        assert {"attention", "image_size", "fwd_bwd_ms", "img_per_s", "peak_mem_mb", "gflops"} <= set(r)
        assert r["img_per_s"] == pytest.approx(1e3 / r["fwd_bwd_ms"], rel=1e-2)
        assert r["tokens"] == (r["image_size"] // 16) ** 2 and r["gflops"] > 0
    assert (tmp_path / "encoder.png").stat().st_size > 0


def test_vit_s_gflops_match_the_analytic_count():
    """Softmax ViT-S/16 at 1024^2 (N = 4096): 12 x 2 x (4NdD + 2N^2 D + 8Nd^2) + patch embedding."""
    n, d = 4096, 384
    expected = 12 * 2 * (4 * n * d * d + 2 * n * n * d + 8 * n * d * d) + 2 * n * 768 * d
    assert forward_gflops("softmax", 1024) == pytest.approx(expected / 1e9, rel=0.01)
    assert forward_gflops("cbsa", 1024) < forward_gflops("softmax", 1024) / 3     # linear vs quadratic


def test_unknown_attention_raises():
    with pytest.raises(ValueError, match="mamba"):
        build_encoder("mamba", 64)
