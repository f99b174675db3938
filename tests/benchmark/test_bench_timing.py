import sys

import pytest
import torch

from cbsa_dense.benchmark.report import markdown_table, speedups
from cbsa_dense.benchmark.timing import machine_info, peak_memory_mb, time_fn, time_interleaved


def test_time_fn_runs_warmup_and_repeats():
    calls = []
    timing = time_fn(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(timing.times_ms) == 3
    assert 0 <= timing.min_ms <= timing.median_ms
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, repeats=0)


def test_time_interleaved_runs_round_robin_after_warmup():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert set(timings) == {"a", "b"} and all(len(t.times_ms) == 3 for t in timings.values())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory reads /proc")
def test_cpu_peak_memory_sees_a_temporary_allocation():
    def allocate():
        torch.ones(64 * 2**20 // 4).sum()                                  # 64 MiB, touched, then freed

    assert 60 <= peak_memory_mb(allocate) <= 100
    assert peak_memory_mb(lambda: None) < 8


def test_markdown_table_and_speedups():
    records = [{"impl": "softmax", "tokens": 16, "fwd_bwd_ms": 30.0, "peak_mem_mb": None, "dtype": "float32"},
               {"impl": "cbsa", "tokens": 16, "fwd_bwd_ms": 10.0, "peak_mem_mb": 1.5, "dtype": "float32"}]
    table = markdown_table(records)
    assert table.splitlines()[0] == "| impl | tokens | fwd_bwd_ms | peak_mem_mb | dtype |"
    assert "| cbsa | 16 | 10 | 1.5 | float32 |" in table and "| - |" in table
    assert speedups(records, "impl", "tokens", "softmax") == [
        {"tokens": 16, "dtype": "float32", "impl": "cbsa", "baseline": "softmax", "speedup": 3.0}]


def test_machine_info_names_the_machine():
    info = machine_info()
    assert info["cpu_count"] >= 1 and info["torch"] == torch.__version__ and info["device"] == "cpu"
