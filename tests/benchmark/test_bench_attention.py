import json

import pytest

from cbsa_dense.benchmark.attention import REFERENCE_TOLERANCE, bench_attention, token_grid
from cbsa_dense.cli import main as cli_main

KEYS = {"impl", "tokens", "fwd_ms", "fwd_bwd_ms", "peak_mem_mb"}


def test_attention_command_prints_records_and_writes_report(tmp_path, capsys):
    out_dir = tmp_path / "report"
    assert cli_main(["benchmark", "attention", "--tokens", "64", "144", "--dim", "32", "--heads", "2",
                     "--rep-grid", "4", "4", "--dtype", "float32", "--warmup", "0", "--repeats", "2",
                     "--json", "--out-dir", str(out_dir)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert isinstance(records, list) and len(records) == 2 * 4
    assert {(r["impl"], r["tokens"]) for r in records} == {
        (i, n) for i in ("cbsa", "softmax", "linear", "cbsa_reference") for n in (64, 144)}
    for r in records:
        assert KEYS <= set(r)
        assert 0 < r["fwd_ms_min"] <= r["fwd_ms"] and 0 < r["fwd_bwd_ms_min"] <= r["fwd_bwd_ms"]
        assert r["dtype"] == "float32" and r["dim"] == 32 and r["heads"] == 2
    reference = [r for r in records if r["impl"] == "cbsa_reference"]
    assert all(r["max_abs_diff"] <= REFERENCE_TOLERANCE for r in reference)
    for suffix in ("json", "md", "png"):
        assert (out_dir / f"attention.{suffix}").stat().st_size > 0
    table = (out_dir / "attention.md").read_text()
    assert "| cbsa_reference | 144 |" in table and "speedup" in table
    assert json.loads((out_dir / "attention.json").read_text())["records"] == records


def test_bf16_records_and_no_memory(capsys):
    records = bench_attention(tokens=[64], dim=32, heads=2, impls=["cbsa", "linear"], rep_grid=(2, 2),
                              dtypes=[__import__("torch").bfloat16], warmup=0, repeats=1, memory=False)
    assert [r["dtype"] for r in records] == ["bfloat16", "bfloat16"]
    assert all(r["peak_mem_mb"] is None for r in records)


def test_markdown_output_without_json(capsys):
    assert cli_main(["benchmark", "attention", "--tokens", "16", "--dim", "16", "--heads", "2", "--rep-grid",
                     "2", "2", "--impls", "cbsa", "--dtype", "float32", "--warmup", "0", "--repeats", "1",
                     "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| impl | tokens | fwd_ms | fwd_bwd_ms | peak_mem_mb |")


@pytest.mark.parametrize("tokens, grid", [(4096, (64, 64)), (12, (3, 4)), (13, (1, 13))])
def test_token_grid_is_most_square(tokens, grid):
    assert token_grid(tokens) == grid


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="flash"):
        bench_attention(tokens=[16], impls=["flash"])
