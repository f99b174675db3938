"""``benchmark attention``: one attention layer (projections included), CBSA vs softmax (SDPA) vs linear.

Records (one per implementation, token count and dtype)::

    {"impl": "cbsa" | "softmax" | "linear" | "cbsa_reference", "tokens": n, "fwd_ms": .., "fwd_bwd_ms": ..,
     "peak_mem_mb": .., "fwd_ms_min": .., "fwd_bwd_ms_min": .., "dtype": "float32" | "bfloat16",
     "batch": B, "dim": d, "heads": h, "device": "cpu"}

Implementations and both passes are timed round-robin (each repeat runs the forward and the
forward+backward of every implementation in turn), so load changes on a shared machine hit them alike. ``fwd_ms``: forward under ``torch.no_grad``; ``fwd_bwd_ms``: forward + backward to the input and all
parameters with a fixed random output gradient; ``peak_mem_mb``: extra memory of one forward + backward
(:func:`~cbsa_dense.benchmark.timing.peak_memory_mb`). Times are medians, ``*_min`` the minima.
bf16 runs use ``torch.autocast`` with float32 parameters (mixed-precision training). The
``cbsa_reference`` record also carries ``max_abs_diff``: the largest output difference to the ``cbsa``
layer with the same weights (float32), which must be <= 1e-5.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import nn

from cbsa_dense.benchmark.reference import ReferenceCBSA
from cbsa_dense.benchmark.timing import peak_memory_mb, time_interleaved
from cbsa_dense.layers import CBSAAttention, LinearAttention, SoftmaxAttention

IMPLS = ("cbsa", "softmax", "linear", "cbsa_reference")

#: Largest output difference allowed between the fast layer and the reference (float32).
REFERENCE_TOLERANCE = 1e-5


def token_grid(tokens: int) -> tuple[int, int]:
    """The most square (H, W) patch grid with H * W = tokens (H <= W)."""
    if tokens < 1:
        raise ValueError(f"tokens must be positive, got {tokens}")
    h = math.isqrt(tokens)
    while tokens % h:
        h -= 1
    return h, tokens // h


def build_layer(impl: str, dim: int, heads: int, rep_grid: tuple[int, int] = (8, 8)) -> nn.Module:
    """One attention layer of the benchmark at equal width (CBSA: ``rep_grid`` representatives)."""
    if impl == "cbsa":
        return CBSAAttention(dim, heads, grid=rep_grid)
    if impl == "cbsa_reference":
        return ReferenceCBSA.from_layer(CBSAAttention(dim, heads, grid=rep_grid))
    if impl == "softmax":
        return SoftmaxAttention(dim, heads)
    if impl == "linear":
        return LinearAttention(dim, heads)
    raise ValueError(f"unknown attention impl {impl!r}; choose from {IMPLS}")


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def reference_max_abs_diff(dim: int, heads: int, tokens: int, rep_grid: tuple[int, int] = (8, 8),
                           device: torch.device | str = "cpu", seed: int = 0) -> float:
    """Largest |CBSAAttention(x) - ReferenceCBSA(x)| over one float32 input of ``tokens`` tokens."""
    generator = torch.Generator().manual_seed(seed)
    layer = CBSAAttention(dim, heads, grid=rep_grid).to(device)
    reference = ReferenceCBSA.from_layer(layer)
    x = torch.randn(1, tokens, dim, generator=generator).to(device)
    grid = token_grid(tokens)
    with torch.no_grad():
        return (layer(x, grid) - reference(x, grid)).abs().max().item()


def bench_attention(tokens: Sequence[int] = (1024, 4096, 16384), dim: int = 384, heads: int = 6, batch: int = 1,
                    impls: Sequence[str] = IMPLS, dtypes: Sequence[torch.dtype] = (torch.float32,),
                    device: torch.device | str = "cpu", rep_grid: tuple[int, int] = (8, 8), warmup: int = 1,
                    repeats: int = 5, memory: bool = True) -> list[dict]:
    """Run the attention benchmark; returns one record per (tokens, dtype, impl) (see module doc)."""
    device = torch.device(device)
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise ValueError(f"unknown attention impls {unknown}; choose from {IMPLS}")
    records = []
    for n in tokens:
        grid = token_grid(n)
        diff = reference_max_abs_diff(dim, heads, n, rep_grid, device) if "cbsa_reference" in impls else None
        for dtype in dtypes:
            cases = {}
            for impl in impls:
                torch.manual_seed(0)
                cases[impl] = LayerCase(build_layer(impl, dim, heads, rep_grid).to(device), batch, grid, dtype, device)
            fns = {(i, "fwd"): c.forward for i, c in cases.items()}
            fns.update({(i, "fwd_bwd"): c.forward_backward for i, c in cases.items()})
            timings = time_interleaved(fns, device, warmup, repeats)
            fwd = {i: timings[(i, "fwd")] for i in cases}
            fwd_bwd = {i: timings[(i, "fwd_bwd")] for i in cases}
            for impl, case in cases.items():
                record = {"impl": impl, "tokens": n, "fwd_ms": round(fwd[impl].median_ms, 3),
                          "fwd_bwd_ms": round(fwd_bwd[impl].median_ms, 3),
                          "peak_mem_mb": _round(peak_memory_mb(case.forward_backward, device) if memory else None),
                          "fwd_ms_min": round(fwd[impl].min_ms, 3), "fwd_bwd_ms_min": round(fwd_bwd[impl].min_ms, 3),
                          "dtype": str(dtype).removeprefix("torch."), "batch": batch, "dim": dim, "heads": heads,
                          "device": device.type}
                if impl == "cbsa_reference":
                    record["max_abs_diff"] = diff
                records.append(record)
    return records


class LayerCase:
    """One layer on fixed random tokens: ``forward`` (no grad) and ``forward_backward`` callables."""

    def __init__(self, layer: nn.Module, batch: int, grid: tuple[int, int], dtype: torch.dtype,
                 device: torch.device) -> None:
        dim = layer.proj.out_features
        n = grid[0] * grid[1]
        self.layer, self.grid, self.dtype, self.device = layer, grid, dtype, device
        self.x = torch.randn(batch, n, dim, device=device, requires_grad=True)
        self.grad = torch.randn(batch, n, dim, device=device)

    def forward(self) -> torch.Tensor:
        with torch.no_grad(), _autocast(self.device, self.dtype):
            return self.layer(self.x, self.grid)

    def forward_backward(self) -> None:
        with _autocast(self.device, self.dtype):
            out = self.layer(self.x, self.grid)
        out.backward(self.grad.to(out.dtype))
        self.layer.zero_grad(set_to_none=True)
        self.x.grad = None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
