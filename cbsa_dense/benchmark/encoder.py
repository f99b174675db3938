"""``benchmark encoder``: the ViT-S-width encoder (12 blocks) with CBSA vs softmax attention.

Records (one per attention, image size and dtype)::

    {"attention": "cbsa" | "softmax" | "linear", "image_size": s, "tokens": (s/16)^2, "fwd_bwd_ms": ..,
     "img_per_s": .., "peak_mem_mb": .., "gflops": .., "fwd_bwd_ms_min": .., "batch": B,
     "dtype": "float32" | "bfloat16", "device": "cpu"}

Attentions are timed round-robin per image size. ``fwd_bwd_ms``: median forward + backward of a batch of ``s x s`` images (sum of the output map as the
loss); ``img_per_s = batch / fwd_bwd``; ``gflops``: forward GFLOPs per image (2 x multiply-accumulates,
counted by ``torch.utils.flop_counter.FlopCounterMode`` on the meta device, SDPA included).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from cbsa_dense.benchmark.timing import peak_memory_mb, time_interleaved
from cbsa_dense.layers import CBSAAttention, LinearAttention, SoftmaxAttention
from cbsa_dense.models.encoders import ViTEncoder

ATTENTIONS = ("cbsa", "softmax", "linear")


def build_encoder(attention: str, image_size: int, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                  patch_size: int = 16, rep_grid: tuple[int, int] = (8, 8)) -> ViTEncoder:
    """ViT encoder of the benchmark (ViT-S width by default) with the named attention in every block."""
    if attention == "cbsa":
        layer = functools.partial(CBSAAttention, grid=rep_grid)
    elif attention == "softmax":
        layer = SoftmaxAttention
    elif attention == "linear":
        layer = LinearAttention
    else:
        raise ValueError(f"unknown attention {attention!r}; choose from {ATTENTIONS}")
    return ViTEncoder(img_size=image_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                      num_heads=num_heads, attn_layer=layer)


def forward_gflops(attention: str, image_size: int, **kwargs) -> float:
    """Forward GFLOPs of one image, counted on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        encoder = build_encoder(attention, image_size, **kwargs)
        images = torch.empty(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(images)
    return counter.get_total_flops() / 1e9


def bench_encoder(image_sizes: Sequence[int] = (512, 1024, 2048), attentions: Sequence[str] = ("cbsa", "softmax"),
                  batch: int = 1, dtypes: Sequence[torch.dtype] = (torch.float32,),
                  device: torch.device | str = "cpu", warmup: int = 1, repeats: int = 3, memory: bool = True,
                  flops: bool = True, **encoder_kwargs) -> list[dict]:
    """Run the encoder benchmark; returns one record per (image size, dtype, attention) (see module doc)."""
    device = torch.device(device)
    records = []
    for size in image_sizes:
        for dtype in dtypes:
            steps = {}
            for attention in attentions:
                torch.manual_seed(0)
                steps[attention] = EncoderStep(build_encoder(attention, size, **encoder_kwargs).to(device).train(),
                                               batch, size, dtype, device)
            timings = time_interleaved({a: s.step for a, s in steps.items()}, device, warmup, repeats)
            for attention, step in steps.items():
                timing = timings[attention]
                gflops = forward_gflops(attention, size, **encoder_kwargs) if flops else None
                records.append({
                    "attention": attention, "image_size": size,
                    "tokens": math.ceil(size / step.encoder.patch_size) ** 2,
                    "fwd_bwd_ms": round(timing.median_ms, 2),
                    "img_per_s": round(batch * 1e3 / timing.median_ms, 4),
                    "peak_mem_mb": _round(peak_memory_mb(step.step, device) if memory else None),
                    "gflops": None if gflops is None else float(f"{gflops:.4g}"),
                    "fwd_bwd_ms_min": round(timing.min_ms, 2), "batch": batch,
                    "dtype": str(dtype).removeprefix("torch."), "device": device.type})
    return records


class EncoderStep:
    """One encoder on a fixed random batch; ``step()`` = forward + backward (sum of the last map as loss)."""

    def __init__(self, encoder: ViTEncoder, batch: int, size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.encoder, self.dtype, self.device = encoder, dtype, device
        self.images = torch.randn(batch, 3, size, size, device=device)

    def step(self) -> None:
        cast = (contextlib.nullcontext() if self.dtype == torch.float32
                else torch.autocast(self.device.type, dtype=self.dtype))
        with cast:
            out = self.encoder(self.images)[-1]
        out.float().sum().backward()
        self.encoder.zero_grad(set_to_none=True)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
