"""TaskCheckpoint: keep the best checkpoint by the task's own validation metric, and ``last.ckpt``.

One callback preset serves every task (``configs/base/runtime.yaml``): each task declares the metric that
ranks its checkpoints (``checkpoint_monitor``: ``val_miou`` for segmentation, ``val_map`` for detection),
so configs do not repeat a ``ModelCheckpoint`` block per task.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

from cbsa_dense.errors import ConfigError


class TaskCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``monitor``/``mode`` default to the task's ``checkpoint_monitor``.

    Args:
        monitor: metric to rank checkpoints by; ``None`` = the task's (``val_miou``, ``val_map``).
        mode: ``"max"`` or ``"min"``; ``None`` = the task's.
        filename: ``None`` = ``epoch{epoch:02d}-step{step}-<metric>{<metric>:.4f}``.
        save_last: also keep ``last.ckpt`` (default ``True``).
        **kwargs: any other ``ModelCheckpoint`` argument (``save_top_k``, ``dirpath``, ...).
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, filename: str | None = None,
                 save_last: bool = True, save_top_k: int = 1, **kwargs) -> None:
        super().__init__(monitor=None, filename=filename, save_last=save_last, save_top_k=save_top_k,
                         auto_insert_metric_name=False, **kwargs)
        self._monitor_arg, self._mode_arg, self._filename_arg = monitor, mode, filename

    def setup(self, trainer, pl_module, stage: str) -> None:
        task_monitor, task_mode = getattr(pl_module, "checkpoint_monitor", (None, None))
        self.monitor = self._monitor_arg or task_monitor
        mode = self._mode_arg or task_mode or "max"
        if mode not in ("min", "max"):
            raise ConfigError(f"TaskCheckpoint mode={mode!r}: use 'max' or 'min'")
        self.mode = mode
        self.kth_value = self.kth_value.new_tensor(float("-inf") if mode == "max" else float("inf"))
        if self._filename_arg is None:
            metric = f"-{self.monitor}{{{self.monitor}:.4f}}" if self.monitor else ""
            self.filename = "epoch{epoch:02d}-step{step}" + metric
        super().setup(trainer, pl_module, stage)
