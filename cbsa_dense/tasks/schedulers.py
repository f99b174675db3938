"""Iteration-based learning-rate schedules with linear warm-up.

Each is a :class:`torch.optim.lr_scheduler.LambdaLR`, so it composes with any optimizer and with the
``lr_scale`` of layer-wise decay groups. ``total_iters=None`` means "the length of the run": the task
calls :meth:`resolve_total` with ``trainer.estimated_stepping_batches`` before training starts, so
configs need not repeat the iteration count. Step them every optimizer step (``interval: step``).
"""

from __future__ import annotations

import math
from functools import partial

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
        # One factor per param group (layer-decay groups have different base lrs): a schedule whose
        # floor is an absolute lr (WarmupPolyLR's min_lr) needs the group's own base lr.
        super().__init__(optimizer, [partial(self._factor, group=index)
                                     for index in range(len(optimizer.param_groups))])

    def resolve_total(self, total_iters: int) -> None:
        """Set ``total_iters`` if it was left ``None`` (called by the task at fit start)."""
        if self.total_iters is None:
            self.total_iters = max(1, int(total_iters))

    def _factor(self, it: int, group: int = 0) -> float:
        total = self.total_iters if self.total_iters is not None else 1
        base = self._group_decay(group, min(it, total), total)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            return base * (self.warmup_ratio + (1.0 - self.warmup_ratio) * alpha)
        return base

    def _group_decay(self, group: int, it: int, total: int) -> float:
        """The decay factor of param group ``group`` (relative to its base lr) at iteration ``it``."""
        return self._decay(it, total)

    def _decay(self, it: int, total: int) -> float:
        raise NotImplementedError


def _check_min_lr_ratio(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} min_lr_ratio={value!r} is invalid: give the final lr as a fraction of the base lr, "
                          "in [0, 1]")


class WarmupPolyLR(_WarmupSchedule):
    """Poly decay (mmseg/Segmenter ``poly``), after optional linear warm-up.

    ``lr = (base_lr - min_lr) * (1 - it / total) ** power + min_lr``, so the lr decays to ``min_lr``
    at the end of the run (the paper's recipe, as Segmenter's: ``min_lr=1e-5``). This is the formula of MMCV's
    ``PolyLrUpdaterHook`` (``(base_lr - min_lr) * (1 - progress / max_progress) ** power + min_lr``)
    and the closed form of MMEngine's ``PolyLR``/``PolyParamScheduler``, whose chained update
    ``(lr - eta_min) * (1 - 1 / (T - t + 1)) ** power + eta_min`` telescopes to
    ``(base_lr - eta_min) * (1 - t / T) ** power + eta_min``.

    Several param groups (layer-wise lr decay, a separate ``step_size_lr_scale``): ``min_lr`` is an
    absolute lr, the same for every group, and each group decays from its own base lr to it, as
    MMEngine applies ``eta_min`` to each group (and MMCV ``min_lr`` to each group's ``base_lr``). A group
    whose base lr is already below ``min_lr`` therefore *rises* to ``min_lr`` over the run, as in MMEngine;
    use ``min_lr_ratio`` for a floor relative to each group's base lr instead. A group with base lr 0
    stays at 0 (a frozen group is not revived). The warm-up multiplies this lr, as MMCV's warm-up
    multiplies the "regular" lr. ``it`` counts optimizer steps from 0 and ``total`` is the run's number of
    steps, as MMCV's ``runner.iter``/``max_iters`` (Segmenter trains with MMCV): the lr reaches ``min_lr``
    after the last step; the last step itself runs at ``min_lr + (base_lr - min_lr) * (1 / total) ** power``.
    (MMEngine's ``PolyLR(end=total)`` uses ``total - 1`` and reaches ``eta_min`` one step earlier.)

    Args:
        optimizer: the optimizer.
        power: decay exponent (0.9 in the paper's recipe).
        total_iters: iterations of the whole run; ``None`` = taken from the trainer.
        warmup_iters: linear warm-up iterations.
        warmup_ratio: lr factor at iteration 0 of the warm-up.
        min_lr: absolute lr at the end of the decay (1e-5 in the paper's recipe; default 0).
        min_lr_ratio: floor of the decay as a fraction of each group's base lr (alternative to ``min_lr``;
            giving both is an error).
    """

    def __init__(self, optimizer: Optimizer, power: float = 0.9, total_iters: int | None = None,
                 warmup_iters: int = 0, warmup_ratio: float = 1e-3, min_lr: float = 0.0,
                 min_lr_ratio: float = 0.0) -> None:
        if not 0 <= power < math.inf:
            raise ConfigError(f"WarmupPolyLR power={power!r} is invalid: give an exponent >= 0 (0.9 in the paper's "
                              "recipe; 0 keeps the lr constant)")
        if not 0 <= min_lr < math.inf:
            raise ConfigError(f"WarmupPolyLR min_lr={min_lr!r} is invalid: give the absolute lr at the end of the "
                              "run, >= 0 (1e-5 in the paper's recipe)")
        _check_min_lr_ratio("WarmupPolyLR", min_lr_ratio)
        if min_lr and min_lr_ratio:
            raise ConfigError(f"WarmupPolyLR got both min_lr={min_lr!r} and min_lr_ratio={min_lr_ratio!r}: give one "
                              "floor, absolute (min_lr) or relative to each group's base lr (min_lr_ratio)")
        self.power = power
        self.min_lr = float(min_lr)
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, total_iters, warmup_iters, warmup_ratio)

    def _decay(self, it: int, total: int) -> float:
        return (1.0 - self.min_lr_ratio) * (1.0 - it / total) ** self.power + self.min_lr_ratio

    def _group_decay(self, group: int, it: int, total: int) -> float:
        decay = self._decay(it, total)
        base_lr = self.base_lrs[group]
        if not self.min_lr or not base_lr:
            return decay
        return ((base_lr - self.min_lr) * decay + self.min_lr) / base_lr


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
