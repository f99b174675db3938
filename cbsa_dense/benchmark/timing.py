"""Timing and peak-memory harness shared by the benchmarks.

Time: ``warmup`` untimed calls, then ``repeats`` timed calls (CUDA synchronized); the median and the
minimum are reported. On a shared machine the minimum is the least disturbed run and the median the
typical one. Implementations compared side by side are timed round-robin (:func:`time_interleaved`).

Peak memory (``peak_mem_mb``): the extra memory one call needs above what was allocated before it:
- CUDA: ``torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated()`` around the call (tensor
  memory as the caching allocator counts it).
- CPU (Linux): the growth of the process's resident set during the call: free heap memory is returned
  to the OS first (``malloc_trim``), the kernel's high-water mark is reset (``/proc/self/clear_refs``)
  and ``VmHWM - VmRSS(before)`` is read afterwards. It counts every byte the call touched (tensors,
  allocator slack, library workspaces), so it is slightly above the tensor bytes and has a ~1 MB floor.
  ``None`` where ``/proc`` is not available.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Timing:
    """Wall-clock times of the timed calls, in milliseconds."""

    times_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 1,
            repeats: int = 5) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls then ``repeats`` timed ones.

    Raises:
        ValueError: if ``repeats`` < 1 or ``warmup`` < 0.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_fn needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return Timing(times)


def time_interleaved(fns: dict[Hashable, Callable[[], object]], device: torch.device | str = "cpu", warmup: int = 1,
                     repeats: int = 5) -> dict[Hashable, Timing]:
    """Time several functions round-robin: each repeat calls every function once, in turn.

    On a machine whose load changes over time this keeps their ratios fair: a busy spell slows one
    repeat of every function instead of all repeats of one of them.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_interleaved needs repeats >= 1 and warmup >= 0, got repeats={repeats}, "
                         f"warmup={warmup}")
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[Hashable, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing(t) for name, t in times.items()}


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{key} not found in {_STATUS}")
    return int(match.group(1)) / 1024


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str = "cpu") -> float | None:
    """Extra memory (MiB) needed by one call of ``fn()`` above the memory in use before it (see module doc)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if device.type != "cpu" or not (_STATUS.exists() and _CLEAR_REFS.exists()):
        return None
    _trim_heap()
    try:
        _CLEAR_REFS.write_text("5")                     # reset the peak-RSS high-water mark (Linux >= 4.0)
    except OSError:
        return None
    before = _status_mb("VmRSS")
    fn()
    return max(_status_mb("VmHWM") - before, 0.0)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def supported_dtypes(device: torch.device) -> list[torch.dtype]:
    """float32, plus bfloat16 where the device runs it natively (CUDA bf16, CPU AVX512-BF16/AMX)."""
    dtypes = [torch.float32]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtypes.append(torch.bfloat16)
    elif device.type == "cpu" and torch.backends.mkldnn.is_available() and _cpu_has_bf16():
        dtypes.append(torch.bfloat16)
    return dtypes


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_info(device: torch.device | str = "cpu") -> dict[str, object]:
    """What the numbers were measured on: CPU model, cores, threads, torch version, GPU name."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    info: dict[str, object] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                               "torch": torch.__version__, "python": platform.python_version(),
                               "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
