import json

import pytest
import torch

import cbsa_dense.benchmark.attention as attention_bench
from cbsa_dense.benchmark.attention import (
    REFERENCE_TOLERANCE,
    bench_attention,
    reference_max_abs_diff,
    token_grid,
)
from cbsa_dense.benchmark.reference import ReferenceCBSA
from cbsa_dense.benchmark.timing import Timing
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
        assert r["dtype"] == "float32" and r["dim"] == 32 and r["heads"] == 2
    reference = [r for r in records if r["impl"] == "cbsa_reference"]
    assert all(r["max_abs_diff"] <= REFERENCE_TOLERANCE for r in reference)
    for suffix in ("json", "md", "png"):
        assert (out_dir / f"attention.{suffix}").stat().st_size > 0
    table = (out_dir / "attention.md").read_text()
    assert "| cbsa_reference | 144 |" in table and "speedup" in table
    assert json.loads((out_dir / "attention.json").read_text())["records"] == records


def test_records_report_the_median_and_minimum_of_each_pass(monkeypatch):
    """With the timer replaced by known run times: each record takes the median and the minimum of its own
    implementation's forward runs and forward+backward runs."""
    runs = {("cbsa", "fwd"): [3.0, 1.0, 2.0], ("cbsa", "fwd_bwd"): [9.0, 5.0, 7.0],
            ("softmax", "fwd"): [12.0, 10.0, 11.0], ("softmax", "fwd_bwd"): [40.0, 20.0, 30.0]}

    def known_times(fns, device, warmup, repeats):
        assert set(fns) == set(runs)                    # both passes of every implementation in one round-robin
        return {key: Timing(runs[key]) for key in fns}

    monkeypatch.setattr(attention_bench, "time_interleaved", known_times)
    records = bench_attention(tokens=[16], dim=16, heads=2, impls=["cbsa", "softmax"], rep_grid=(2, 2), warmup=0,
                              repeats=3, memory=False)
    got = {r["impl"]: (r["fwd_ms"], r["fwd_ms_min"], r["fwd_bwd_ms"], r["fwd_bwd_ms_min"]) for r in records}
    assert got == {"cbsa": (2.0, 1.0, 7.0, 5.0), "softmax": (11.0, 10.0, 30.0, 20.0)}


def test_reference_difference_flags_a_reference_that_computes_something_else(monkeypatch):
    """``max_abs_diff`` is a real comparison: an error of 1e-3 in one output of the reference shows as 1e-3,
    above the tolerance, and the same comparison of the two faithful layers is below it."""
    assert reference_max_abs_diff(32, 2, 64, rep_grid=(4, 4)) <= REFERENCE_TOLERANCE
    faithful = ReferenceCBSA.forward

    def off_by_one_thousandth(self, x, grid, num_prefix_tokens=0):
        out = faithful(self, x, grid, num_prefix_tokens).clone()
        out[0, 5, 3] += 1e-3
        return out

    monkeypatch.setattr(ReferenceCBSA, "forward", off_by_one_thousandth)
    wrong = reference_max_abs_diff(32, 2, 64, rep_grid=(4, 4))
    assert wrong == pytest.approx(1e-3, abs=REFERENCE_TOLERANCE) and wrong > REFERENCE_TOLERANCE


def test_bf16_records_and_no_memory(capsys):
    records = bench_attention(tokens=[64], dim=32, heads=2, impls=["cbsa", "linear"], rep_grid=(2, 2),
                              dtypes=[torch.bfloat16], warmup=0, repeats=1, memory=False)
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
