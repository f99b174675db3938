"""TaskCheckpoint: keep the best checkpoint by the task's own validation metric, and ``last.ckpt``.

One callback preset serves every task (``configs/base/runtime.yaml``): each task declares the metric that
ranks its checkpoints (``checkpoint_monitor``: ``val_miou`` for segmentation, ``val_map`` for detection),
so configs do not repeat a ``ModelCheckpoint`` block per task.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from cbsa_dense.errors import ConfigError


class TaskCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``monitor``/``mode`` default to the task's ``checkpoint_monitor``.

    What the shipped callback preset (``configs/base/runtime.yaml``) keeps in ``<run>/checkpoints/``, each file the
    full training state (weights, optimizer state, LR scheduler, loop and sampler position, callback states,
    hyper-parameters: any of them resumes a ``fit`` exactly, and serves ``test``/``predict``/``export``):

    - ``epochNN-stepN-<metric>X.ckpt``: the best validation so far (this callback, ``save_top_k=1``);
    - ``last.ckpt``: the latest validation (this callback; also written on SIGTERM by ``PreemptionCheckpoint``);
    - ``latest-step=N.ckpt``: every 1000 training steps (a plain ``ModelCheckpoint``, the one most recent kept),
      the resume point between validations.

    So up to three files, each the float32 weights (4 bytes a parameter) plus the optimizer's state: AdamW keeps
    two more tensors per trained parameter (x3), SGD with momentum one (x2). ViT-S, measured: segmentation
    (22-23 M parameters) 90 MB of weights, 270 MB with AdamW (``finetune_cpu``), 180 MB with the paper's SGD
    (``seg_ade20k``); FCOS detection (``det_coco``, ``det_custom``: 30-31 M) 125 MB, 365 MB with AdamW.

    ``save_weights_only: true`` (``init_args`` of this callback in the config's ``trainer.callbacks``, as
    ``configs/finetune_cpu.yaml`` does) writes the best and last files without the optimizer, scheduler and loop
    state (the weights and hyper-parameters: ``test``, ``predict``, ``export``, ``cbsa_dense.load`` and
    ``--model.init_args.weights`` take them, a ``fit --ckpt_path`` cannot resume from them; a SIGTERM's
    ``last.ckpt`` is still the full state); keep the ``latest-{step}`` ``ModelCheckpoint`` (full state) when runs
    must resume. When the best and the last file are the same step they are written twice: Lightning's
    ``save_last="link"`` is not used, as it points ``last.ckpt`` at the best file also when later validations did
    not improve, which would resume a run from the wrong step.

    At the end of ``fit`` it prints where the files are, one line (stdout, rank 0)::

        checkpoints: best runs/demo_seg/version_0/checkpoints/epoch11-step240-val_miou0.8512.ckpt (val_miou 0.8512), last runs/demo_seg/version_0/checkpoints/last.ckpt

    (paths relative to the working folder when inside it; ``best`` is left out when no validation ranked a file,
    and the line says ``none written`` when there is no file at all).

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

    def on_validation_end(self, trainer, pl_module) -> None:
        """As ModelCheckpoint, then ``last.ckpt`` at this step if it was not written: Lightning 2.6 writes it only
        when the best file was written at the same step, so a validation that did not improve left ``last.ckpt``
        at an older step (a fine-tuned model predicted with its step-100 weights after 300 steps)."""
        super().on_validation_end(trainer, pl_module)
        if (not self.save_last or trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit"
                or self._last_global_step_saved == trainer.global_step):
            return
        path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        self.last_model_path = path                  # before saving: it is part of this callback's saved state
        trainer.save_checkpoint(path, self.save_weights_only)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(self.summary(), flush=True)

    def summary(self) -> str:
        """The line printed at the end of ``fit``: the best and the last checkpoint files."""
        parts = []
        if self.best_model_path and Path(self.best_model_path).is_file():
            score = self.best_model_score
            value = float(score) if score is not None else math.nan
            shown = f" ({self.monitor} {value:.4f})" if self.monitor and math.isfinite(value) else ""
            parts.append(f"best {_shown_path(self.best_model_path)}{shown}")
        if self.last_model_path and Path(self.last_model_path).is_file():
            parts.append(f"last {_shown_path(self.last_model_path)}")
        return "checkpoints: " + (", ".join(parts) if parts else "none written")


def _shown_path(path: str) -> str:
    """``path`` relative to the working folder when it is inside it, else as it is."""
    try:
        relative = os.path.relpath(path)
    except ValueError:                       # another drive (Windows)
        return str(path)
    return relative if not relative.startswith("..") else str(path)
