"""Attention within windows of the training crop's token grid, for one pass over a large image.

A detector trained on 224 px crops (16x16 tokens at patch 14) and run once over a whole 1249x1035 photo (89x74
tokens) meets attention unlike its training: CBSA's fixed 8x8 representatives each pool an 11x9 patch of tokens
instead of 2x2, and every token mixes with the whole photo. Run in windows of the crop's grid, every attention
layer sees what it saw in training, while the MLPs, the neck and the head run over the whole image in one pass
(no overlapping tiles to compute twice, no seams in the feature map). Cost stays linear in the pixels.

:func:`attention_windows` puts every block's attention layer of an encoder in windows for the duration of a
``with`` block (any layer with the package's call contract ``attn(x, grid, num_prefix_tokens)``); the detection
evaluation mode ``windowed`` uses it (:class:`~cbsa_dense.tasks.eval_protocol.DetEvaluation`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from cbsa_dense.errors import ConfigError


def window_spans(length: int, window: int) -> list[tuple[int, int, int]]:
    """Windows of exactly ``window`` tokens along a side of ``length`` (one window of ``length`` if it is not
    longer): ``(start, keep_from, keep_to)`` each. They start every ``window`` tokens; where the side does
    not divide, the last one ends at the side, overlapping its neighbour, and keeps only the tokens no other
    window had (as the training crops were exactly ``window`` tokens, so is every window here)."""
    if length <= window:
        return [(0, 0, length)]
    starts = list(range(0, length - window + 1, window))
    spans = [(start, start, start + window) for start in starts]
    if starts[-1] + window < length:
        spans.append((length - window, starts[-1] + window, length))
    return spans


class WindowedAttention(nn.Module):
    """``attn`` applied to each window of the patch grid separately, every window ``window`` tokens a side
    (:func:`window_spans`; a side no longer than the window is one window). Prefix tokens (class and register
    tokens) join every window, and their output is the mean over the windows. A grid no larger than the
    window passes through unchanged."""

    def __init__(self, attn: nn.Module, window: tuple[int, int]) -> None:
        super().__init__()
        self.attn = attn
        self.window = (int(window[0]), int(window[1]))

    def forward(self, x: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
        h, w = grid
        if h <= self.window[0] and w <= self.window[1]:
            return self.attn(x, grid, num_prefix_tokens)
        p = num_prefix_tokens
        prefix, suffix = x[:, :p], x[:, p + h * w:]
        patches = x[:, p:p + h * w].unflatten(1, (h, w))
        out = torch.empty_like(patches)
        others = []
        for top, row_from, row_to in window_spans(h, self.window[0]):
            rows = min(self.window[0], h)
            for left, col_from, col_to in window_spans(w, self.window[1]):
                cols = min(self.window[1], w)
                window = patches[:, top:top + rows, left:left + cols].flatten(1, 2)
                y = self.attn(torch.cat([prefix, window, suffix], dim=1), (rows, cols), p)
                tokens = y[:, p:p + rows * cols].unflatten(1, (rows, cols))
                out[:, row_from:row_to, col_from:col_to] = tokens[:, row_from - top:row_to - top,
                                                                  col_from - left:col_to - left]
                others.append(torch.cat([y[:, :p], y[:, p + rows * cols:]], dim=1))
        others = torch.stack(others).mean(dim=0)
        return torch.cat([others[:, :p], out.flatten(1, 2), others[:, p:]], dim=1)


@contextmanager
def attention_windows(encoder: nn.Module, pixels: int) -> Iterator[None]:
    """Inside the block, every ``encoder.blocks[i].attn`` works in windows of ``pixels`` a side, in whole
    patches (the encoder's output stride): 224 px at patch 14 is 16 tokens."""
    blocks = list(getattr(encoder, "blocks", []))
    if not blocks or not all(hasattr(b, "attn") for b in blocks):
        raise ConfigError(f"evaluation mode windowed needs an encoder of transformer blocks with attention layers, "
                          f"not {type(encoder).__name__}: use mode native or tiled")
    tokens = max(1, int(pixels) // int(encoder.out_strides[-1]))
    layers = [b.attn for b in blocks]
    try:
        for block, attn in zip(blocks, layers):
            block.attn = WindowedAttention(attn, (tokens, tokens))
        yield
    finally:
        for block, attn in zip(blocks, layers):
            block.attn = attn
