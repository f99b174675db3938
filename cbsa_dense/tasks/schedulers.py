"""Iteration-based learning-rate schedules with linear warm-up.

Each is a :class:`torch.optim.lr_scheduler.LambdaLR`, so it composes with any optimizer and with the
``lr_scale`` of layer-wise decay groups. ``total_iters=None`` means "the length of the run": the task
calls :meth:`resolve_total` with ``trainer.estimated_stepping_batches`` before training starts, so
configs need not repeat the iteration count. Step them every optimizer step (``interval: step``).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cbsa_dense.errors import ConfigError


class _WarmupSchedule(LambdaLR):
    def __init__(self, optimizer: Optimizer, total_iters: int | None, warmup_iters: int,
                 warmup_ratio: float) -> None:
        if warmup_iters < 0 or not 0.0 <= warmup_ratio <= 1.0:
            raise ConfigError(f"warmup_iters must be >= 0 and warmup_ratio in [0, 1], got "
                             f"{warmup_iters} and {warmup_ratio}")
        self.total_iters = total_iters
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer, self._factor)

    def resolve_total(self, total_iters: int) -> None:
        """Set ``total_iters`` if it was left ``None`` (called by the task at fit start)."""
        if self.total_iters is None:
            self.total_iters = max(1, int(total_iters))

    def _factor(self, it: int) -> float:
        total = self.total_iters if self.total_iters is not None else 1
        base = self._decay(min(it, total), total)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            return base * (self.warmup_ratio + (1.0 - self.warmup_ratio) * alpha)
        return base

    def _decay(self, it: int, total: int) -> float:
        raise NotImplementedError


def _check_min_lr_ratio(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} min_lr_ratio={value!r} is invalid: give the final lr as a fraction of the base lr, "
                          "in [0, 1]")


class WarmupPolyLR(_WarmupSchedule):
    """``lr = base_lr * (1 - it / total) ** power`` (mmseg/Segmenter ``poly``), after optional warm-up.

    Args:
        optimizer: the optimizer.
        power: decay exponent (0.9 in the paper's recipe).
        total_iters: iterations of the whole run; ``None`` = taken from the trainer.
        warmup_iters: linear warm-up iterations.
        warmup_ratio: lr factor at iteration 0 of the warm-up.
        min_lr_ratio: floor of the decay, as a fraction of the base lr.
    """

    def __init__(self, optimizer: Optimizer, power: float = 0.9, total_iters: int | None = None,
                 warmup_iters: int = 0, warmup_ratio: float = 1e-3, min_lr_ratio: float = 0.0) -> None:
        if not 0 <= power < math.inf:
            raise ConfigError(f"WarmupPolyLR power={power!r} is invalid: give an exponent >= 0 (0.9 in the paper's "
                              "recipe; 0 keeps the lr constant)")
        _check_min_lr_ratio("WarmupPolyLR", min_lr_ratio)
        self.power = power
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, total_iters, warmup_iters, warmup_ratio)

    def _decay(self, it: int, total: int) -> float:
        return (1.0 - self.min_lr_ratio) * (1.0 - it / total) ** self.power + self.min_lr_ratio


class WarmupCosineLR(_WarmupSchedule):
    """Half-cosine decay from the base lr to ``min_lr_ratio * base_lr``, after optional warm-up."""

    def __init__(self, optimizer: Optimizer, total_iters: int | None = None, warmup_iters: int = 0,
                 warmup_ratio: float = 1e-3, min_lr_ratio: float = 0.0) -> None:
        _check_min_lr_ratio("WarmupCosineLR", min_lr_ratio)
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, total_iters, warmup_iters, warmup_ratio)

    def _decay(self, it: int, total: int) -> float:
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * it / total))


class WarmupStepLR(_WarmupSchedule):
    """Multiply the lr by ``gamma`` at each milestone, given as fractions of the run (ViTDet: 0.89, 0.96)."""

    def __init__(self, optimizer: Optimizer, milestones: tuple[float, ...] = (0.89, 0.96), gamma: float = 0.1,
                 total_iters: int | None = None, warmup_iters: int = 250, warmup_ratio: float = 1e-3) -> None:
        if any(not 0.0 < m < 1.0 for m in milestones):
            raise ConfigError(f"milestones are fractions of the run in (0, 1), got {milestones}")
        self.milestones = tuple(sorted(milestones))
        self.gamma = gamma
        super().__init__(optimizer, total_iters, warmup_iters, warmup_ratio)

    def _decay(self, it: int, total: int) -> float:
        return self.gamma ** sum(it >= m * total for m in self.milestones)
