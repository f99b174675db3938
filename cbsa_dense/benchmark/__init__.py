"""Speed and memory benchmarks behind ``cbsa-dense benchmark`` (attention layers, encoders, training).

One concept per module: :mod:`.timing` (timing and peak-memory harness), :mod:`.reference` (the
authors-style CBSA used as a baseline), :mod:`.attention`, :mod:`.encoder`, :mod:`.train` (the three
benchmarks, each returning a list of JSON-able records) and :mod:`.report` (markdown table and plot).
"""

from cbsa_dense.benchmark.attention import bench_attention
from cbsa_dense.benchmark.encoder import bench_encoder
from cbsa_dense.benchmark.reference import ReferenceCBSA
from cbsa_dense.benchmark.report import markdown_table, write_report
from cbsa_dense.benchmark.timing import Timing, machine_info, peak_memory_mb, time_fn, time_interleaved
from cbsa_dense.benchmark.train import bench_train

__all__ = ["ReferenceCBSA", "Timing", "bench_attention", "bench_encoder", "bench_train", "machine_info",
           "markdown_table", "peak_memory_mb", "time_fn", "time_interleaved", "write_report"]
