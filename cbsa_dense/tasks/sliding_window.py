"""Whole-image or sliding-window inference, optionally multi-scale + flip (mmseg's ``slide`` / ``aug_test``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from cbsa_dense.errors import ConfigError

Model = Callable[[torch.Tensor], torch.Tensor]


class SlidingWindowInference:
    """How validate / test / predict turn an image into per-pixel class scores.

    Windows follow mmseg's ``slide_inference``: ``ceil((H - window) / stride) + 1`` rows (the last one
    aligned to the bottom edge), likewise for columns; window logits are summed and divided by the
    per-pixel window count. Images no larger than the window are run whole. With several ``scales`` or
    ``flip``, the softmax probabilities of all views are averaged (mmseg's TTA).

    Args:
        window: (height, width) of the window; ``None`` runs the whole image at once.
        stride: (height, width) step between windows; ``None`` = 2/3 of the window (mmseg's 512 / 341).
        scales: resize ratios of the (already eval-resized) image; mmseg's TTA uses
            0.5, 0.75, 1.0, 1.25, 1.5, 1.75.
        flip: also run the horizontally flipped image.
        window_batch: windows run in one forward pass.
    """

    def __init__(self, window: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
                 scales: Sequence[float] = (1.0,), flip: bool = False, window_batch: int = 4) -> None:
        if window is not None and (len(window) != 2 or min(window) < 1):
            raise ConfigError(f"window must be (height, width) > 0, got {window}")
        self.window = tuple(window) if window is not None else None
        if stride is None and window is not None:
            stride = (max(1, (2 * window[0]) // 3), max(1, (2 * window[1]) // 3))
        if stride is not None and (len(stride) != 2 or min(stride) < 1):
            raise ConfigError(f"stride must be (height, width) > 0, got {stride}")
        if stride is not None and window is not None and (stride[0] > window[0] or stride[1] > window[1]):
            raise ConfigError(f"stride {tuple(stride)} is larger than window {tuple(window)}: the windows would leave "
                              "pixels between them unpredicted; give a stride <= the window (2/3 of it is usual)")
        self.stride = tuple(stride) if stride is not None else None
        if not scales or min(scales) <= 0:
            raise ConfigError(f"scales must be positive ratios, got {scales}")
        self.scales = tuple(scales)
        if isinstance(window_batch, bool) or not isinstance(window_batch, int) or window_batch < 1:
            raise ConfigError(f"window_batch={window_batch!r} is invalid: give the number of windows per forward "
                              "pass, an integer >= 1")
        self.flip = flip
        self.window_batch = window_batch

    def config(self) -> dict:
        """This protocol as a LightningCLI ``class_path`` / ``init_args`` dict (stored in checkpoints)."""
        return {"class_path": f"{type(self).__module__}.{type(self).__name__}",
                "init_args": {"window": list(self.window) if self.window else None,
                              "stride": list(self.stride) if self.stride else None,
                              "scales": list(self.scales), "flip": self.flip, "window_batch": self.window_batch}}

    def describe(self) -> str:
        """One line for the user, e.g. ``sliding window 512x512, stride 341x341, scales [1.0], no flip``."""
        if self.window is None:
            where = "whole image"
        else:
            where = (f"sliding window {self.window[0]}x{self.window[1]}, stride {self.stride[0]}x{self.stride[1]}")
        return f"{where}, scales {list(self.scales)}, {'with' if self.flip else 'no'} flip"

    def slide(self, model: Model, images: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Sliding-window logits (B, num_classes, H, W) of images (B, 3, H, W)."""
        b, _, h, w = images.shape
        if self.window is None or (h <= self.window[0] and w <= self.window[1]):
            return model(images)
        (wh, ww), (sh, sw) = self.window, self.stride
        rows = max(h - wh + sh - 1, 0) // sh + 1
        cols = max(w - ww + sw - 1, 0) // sw + 1
        boxes = []
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * sh + wh, h), min(c * sw + ww, w)
                boxes.append((max(y2 - wh, 0), y2, max(x2 - ww, 0), x2))
        logits = images.new_zeros(b, num_classes, h, w)
        count = images.new_zeros(1, 1, h, w)
        for start in range(0, len(boxes), self.window_batch):
            chunk = boxes[start:start + self.window_batch]
            same = len({(y2 - y1, x2 - x1) for y1, y2, x1, x2 in chunk}) == 1
            crops = [images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk]
            outs = model(torch.cat(crops)).split(b) if same else [model(crop) for crop in crops]
            for (y1, y2, x1, x2), out in zip(chunk, outs):
                logits[:, :, y1:y2, x1:x2] += out
                count[:, :, y1:y2, x1:x2] += 1
        return logits / count

    def __call__(self, model: Model, images: torch.Tensor, num_classes: int,
                 out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Class scores of images (B, 3, H, W), resized (bilinear) to ``out_size`` (default (H, W)).

        Returns logits (single view) or averaged probabilities (several views), (B, num_classes, *out_size).
        """
        size = tuple(out_size) if out_size is not None else tuple(images.shape[-2:])
        views = [(s, f) for s in self.scales for f in ((False, True) if self.flip else (False,))]
        total = None
        for scale, flip in views:
            x = images
            if scale != 1.0:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            if flip:
                x = x.flip(-1)
            out = self.slide(model, x, num_classes)
            if flip:
                out = out.flip(-1)
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False) if out.shape[-2:] != size else out
            if len(views) > 1:
                out = out.softmax(dim=1)
            total = out if total is None else total + out
        return total / len(views) if len(views) > 1 else total
