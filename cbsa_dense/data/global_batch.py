"""``global_batch_size``: the training batch as papers state it, the total per optimizer step.

A paper's "batch 8" (Segmenter, MMSegmentation's ``8 GPUs x 1 image``-style configs) is the number of
images that make up one optimizer step, summed over all GPUs. The datamodules' ``batch_size`` is per
device (per DataLoader). With ``global_batch_size`` set, the per-device batch is

    global_batch_size / (world_size * accumulate_grad_batches)

so that every optimizer step sees exactly ``global_batch_size`` images however many devices run it and
whatever gradient accumulation is configured (4 GPUs x 2 = 8; 1 GPU with ``accumulate_grad_batches: 8``
x 1 = 8; 2 GPUs x accumulation 2 x 2 = 8). The division is done once the trainer is known (at
``setup``, else at the first ``train_dataloader``); a total that does not divide is a
:class:`~cbsa_dense.errors.ConfigError`, and the per-device batch used is logged once (rank 0).
"""

from __future__ import annotations

import inspect

import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from cbsa_dense.data.loaders import distributed_world
from cbsa_dense.errors import ConfigError

__all__ = ["check_global_batch_size", "per_device_batch_size", "resolve_batch_size"]


def _default_batch_size(datamodule) -> int | None:
    """The ``batch_size`` default of the most-derived datamodule class that declares one (each has its own)."""
    for cls in type(datamodule).__mro__:
        if "__init__" not in vars(cls):
            continue
        parameter = inspect.signature(cls.__init__).parameters.get("batch_size")
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return None


def check_global_batch_size(datamodule, global_batch_size: int | None, batch_size: int) -> None:
    """Construction-time checks: a positive integer, and not together with a non-default ``batch_size``."""
    if global_batch_size is None:
        return
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer)) \
            or global_batch_size < 1:
        raise ConfigError(f"global_batch_size={global_batch_size!r} is invalid: give an integer >= 1 (the total "
                          "training batch per optimizer step over all devices), or null to use batch_size per device")
    default = _default_batch_size(datamodule)
    if default is not None and batch_size != default:
        raise ConfigError(f"batch_size={batch_size} and global_batch_size={global_batch_size} are both set: give "
                          "one, global_batch_size (the total per optimizer step, divided over the devices) or "
                          "batch_size (per device); to replace a config's global_batch_size by a per-device "
                          "batch_size, also pass --data.init_args.global_batch_size null")


def per_device_batch_size(global_batch_size: int, world_size: int, accumulate_grad_batches: int = 1) -> int:
    """``global_batch_size / (world_size * accumulate_grad_batches)``; ConfigError when it does not divide."""
    world_size, accumulate = max(1, int(world_size)), max(1, int(accumulate_grad_batches))
    share = world_size * accumulate
    if global_batch_size % share:
        if accumulate == 1:
            raise ConfigError(f"global_batch_size={global_batch_size} does not divide over {world_size} devices "
                              f"(world size {world_size}); use a multiple of {world_size} or set batch_size per "
                              "device")
        raise ConfigError(f"global_batch_size={global_batch_size} does not divide over {world_size} devices x "
                          f"{accumulate} accumulated batches (world size {world_size}, accumulate_grad_batches "
                          f"{accumulate}); use a multiple of {share} or set batch_size per device")
    return global_batch_size // share


def resolve_batch_size(datamodule, global_batch_size: int | None, batch_size: int) -> int:
    """The per-device training batch of ``datamodule``: ``batch_size``, or ``global_batch_size`` divided over
    the trainer's devices and gradient accumulation (logged once on rank 0).

    Without a trainer (a datamodule used on its own) the world is the initialized process group, else 1.
    """
    if global_batch_size is None:
        return batch_size
    trainer = getattr(datamodule, "trainer", None)
    if trainer is not None:
        world_size = getattr(trainer, "world_size", 1)
        accumulate = getattr(trainer, "accumulate_grad_batches", 1)
    else:
        world_size, accumulate = distributed_world()[0], 1
    per_device = per_device_batch_size(global_batch_size, world_size, accumulate)
    key = (global_batch_size, world_size, accumulate)
    if getattr(datamodule, "_logged_global_batch", None) != key:
        datamodule._logged_global_batch = key
        accumulation = f" x {accumulate} accumulated batches" if accumulate > 1 else ""
        rank_zero_info(f"global_batch_size={global_batch_size}: training batch {per_device} per device "
                       f"({world_size} device{'s' if world_size != 1 else ''}{accumulation})")
    return per_device
