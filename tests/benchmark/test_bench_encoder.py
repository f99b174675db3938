import json

import pytest

import cbsa_dense.benchmark.encoder as encoder_bench
from cbsa_dense.benchmark.encoder import bench_encoder, build_encoder, forward_gflops
from cbsa_dense.benchmark.timing import Timing
from cbsa_dense.cli import main as cli_main


def analytic_flops(attention: str, image_size: int, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                   rep_grid: tuple[int, int] = (8, 8), patch_size: int = 16) -> int:
    """Forward FLOPs (2 per multiply-accumulate) of the matrix products of one image, counted by hand from the
    layer definitions: P patches plus the CLS token (n tokens), width d = D (inner), p per head, m representatives.

    - patch embedding: P * (3 * patch^2) * d; MLP (ratio 4): 8 n d^2 per block;
    - softmax: qkv 3 n d D, proj n D d, Q K^T and A V: n^2 p per head each;
    - CBSA (shared projection, transposed broadcast): qkv n d D; extraction logits R0 K^T and A V: m n p per head
      each; the m x m contraction (Q K^T and A V): 2 m^2 p per head; C times the head's slice of the output
      projection: m p d per head; the broadcast A^T (C P) fused with the output projection: n (h m) d;
    - linear (elu + 1 features): qkv 3 n d D, phi(k)^T v and phi(q) (k^T v): n p^2 per head each, the normalizer
      phi(q) sum phi(k): n p per head, proj n D d.
    """
    patches = (image_size // patch_size) ** 2
    n, d, h, m = patches + 1, embed_dim, num_heads, rep_grid[0] * rep_grid[1]
    p = d // h
    mixer = {"softmax": 3 * n * d * d + n * d * d + 2 * h * n * n * p,
             "cbsa": n * d * d + 2 * h * m * n * p + 2 * h * m * m * p + h * m * p * d + n * h * m * d,
             "linear": 3 * n * d * d + 2 * h * n * p * p + h * n * p + n * d * d}[attention]
    return 2 * (patches * 3 * patch_size ** 2 * d + depth * (mixer + 8 * n * d * d))


def test_encoder_command_prints_records(tmp_path, capsys):
    assert cli_main(["benchmark", "encoder", "--image-size", "32", "64", "--dim", "32", "--depth", "2",
                     "--heads", "2", "--dtype", "float32", "--warmup", "0", "--repeats", "1", "--json",
                     "--out-dir", str(tmp_path)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["attention"], r["image_size"], r["tokens"]) for r in records] == [
        ("cbsa", 32, 4), ("softmax", 32, 4), ("cbsa", 64, 16), ("softmax", 64, 16)]     # 2x2 and 4x4 patches
    for r in records:
        assert {"attention", "image_size", "fwd_bwd_ms", "img_per_s", "peak_mem_mb", "gflops"} <= set(r)
        expected = analytic_flops(r["attention"], r["image_size"], embed_dim=32, depth=2, num_heads=2) / 1e9
        assert r["gflops"] == pytest.approx(expected, rel=1e-3), r          # the record keeps 4 digits
    assert (tmp_path / "encoder.png").stat().st_size > 0


def test_records_report_the_median_and_minimum_of_the_timed_runs(monkeypatch):
    """With the timer replaced by known run times: the median decides ``fwd_bwd_ms`` and ``img_per_s``
    (batch images per median run), ``fwd_bwd_ms_min`` is the fastest run."""
    runs = {"cbsa": [30.0, 10.0, 20.0], "softmax": [80.0, 40.0, 60.0, 50.0]}

    def known_times(fns, device, warmup, repeats):
        assert set(fns) == {"cbsa", "softmax"} and (warmup, repeats) == (0, 3)
        return {name: Timing(runs[name]) for name in fns}

    monkeypatch.setattr(encoder_bench, "time_interleaved", known_times)
    records = bench_encoder(image_sizes=[32], batch=4, warmup=0, repeats=3, memory=False, flops=False,
                            embed_dim=32, depth=1, num_heads=2)
    by = {r["attention"]: r for r in records}
    assert (by["cbsa"]["fwd_bwd_ms"], by["cbsa"]["fwd_bwd_ms_min"], by["cbsa"]["img_per_s"]) == (20.0, 10.0, 200.0)
    # an even number of runs: the median is the mean of the middle two (50 and 60); 4 images in 55 ms
    assert (by["softmax"]["fwd_bwd_ms"], by["softmax"]["fwd_bwd_ms_min"]) == (55.0, 40.0)
    assert by["softmax"]["img_per_s"] == pytest.approx(72.7273, abs=1e-4)
    assert all(r["gflops"] is None and r["peak_mem_mb"] is None and r["batch"] == 4 for r in records)


@pytest.mark.parametrize("attention", ["softmax", "cbsa", "linear"])
@pytest.mark.parametrize("size, kwargs", [
    (1024, {}),                                                                   # ViT-S/16 at 1024^2: N = 4096 + CLS
    (224, {"embed_dim": 64, "depth": 1, "num_heads": 2, "rep_grid": (2, 2)}),     # another width, heads and m
])
def test_gflops_match_the_hand_count(attention, size, kwargs):
    assert forward_gflops(attention, size, **kwargs) == pytest.approx(
        analytic_flops(attention, size, **kwargs) / 1e9, rel=1e-9)


def test_cbsa_flops_grow_linearly_and_softmax_quadratically():
    """4x the tokens: CBSA's count grows ~4x (all its terms but the small m^2 one are linear in N), softmax's
    by more (its N^2 terms)."""
    cbsa = forward_gflops("cbsa", 2048) / forward_gflops("cbsa", 1024)
    softmax = forward_gflops("softmax", 2048) / forward_gflops("softmax", 1024)
    assert 3.9 < cbsa < 4.05 and softmax > 6
    assert forward_gflops("cbsa", 1024) < forward_gflops("softmax", 1024) / 3


def test_unknown_attention_raises():
    with pytest.raises(ValueError, match="mamba"):
        build_encoder("mamba", 64)
