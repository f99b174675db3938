import sys

import pytest
import torch

import cbsa_dense.benchmark.timing as timing_module
from cbsa_dense.benchmark.report import markdown_table, speedups
from cbsa_dense.benchmark.timing import Timing, machine_info, peak_memory_mb, time_fn, time_interleaved


class FakeClock:
    """Stands in for ``time`` in the timing module: ``perf_counter`` reads a clock that only the timed
    functions move (by the seconds they are given), so the measured times are known exactly."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def work(self, seconds, calls: list | None = None, name: str = ""):
        durations = iter(seconds)

        def fn() -> None:
            if calls is not None:
                calls.append(name)
            self.now += next(durations)

        return fn


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing_module, "time", fake)
    return fake


def test_timing_median_and_minimum():
    assert (Timing([5.0, 1.0, 3.0]).median_ms, Timing([5.0, 1.0, 3.0]).min_ms) == (3.0, 1.0)
    assert Timing([4.0, 1.0, 2.0, 3.0]).median_ms == 2.5                  # even count: mean of the middle two


def test_time_fn_times_the_repeats_not_the_warmup(clock):
    # two warm-up calls of 0.5 s and 0.7 s, then timed calls of 3, 1 and 2 ms
    timing = time_fn(clock.work([0.5, 0.7, 0.003, 0.001, 0.002]), warmup=2, repeats=3)
    assert timing.times_ms == pytest.approx([3.0, 1.0, 2.0])
    assert (timing.median_ms, timing.min_ms) == pytest.approx((2.0, 1.0))
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, repeats=0)


def test_time_interleaved_runs_round_robin_after_warmup(clock):
    calls = []
    fns = {"a": clock.work([0.1, 0.001, 0.002, 0.003], calls, "a"),
           "b": clock.work([0.2, 0.010, 0.020, 0.030], calls, "b")}
    timings = time_interleaved(fns, warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert timings["a"].times_ms == pytest.approx([1.0, 2.0, 3.0])       # each function's own calls, warm-up left out
    assert timings["b"].times_ms == pytest.approx([10.0, 20.0, 30.0])


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
