"""What a fit tells at its end: the per-class table of its last validation, and per-class metric names.

A run whose mIoU is ``(95.8 + 0.0 + 69.8) / 3`` looks fine from the mean alone: the class the model never
predicts only shows per class. So every validation logs one metric per class (``val_iou_<class>``,
``val_map_<class>``: :func:`per_class_keys`) and the task prints its per-class table (the one ``test``
prints) once, after the LAST validation of a fit (:class:`LastValidationReport`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

_UNSAFE = re.compile(r"[^0-9A-Za-z_]+")


def per_class_keys(names: Sequence[str], prefix: str, taken: Iterable[str] = ()) -> list[str]:
    """One metric key per class: ``prefix`` + the class name with every run of characters other than ASCII
    letters, digits and ``_`` replaced by ``_`` (``"traffic light"`` -> ``val_iou_traffic_light``).

    Keys are unique: a name that sanitizes to nothing, to the key of an earlier class or to one of ``taken``
    (the task's other metrics: a class named ``"50"`` must not become ``val_map_50``) gets ``_<index>``
    appended (``class<index>`` for an empty name).
    """
    used = set(taken)
    keys = []
    for index, name in enumerate(names):
        safe = _UNSAFE.sub("_", str(name)).strip("_")
        key = prefix + (safe or f"class{index}")
        if key in used:
            key = f"{key}_{index}"
            while key in used:
                key += "_"
        used.add(key)
        keys.append(key)
    return keys


def fit_ends_after_this_validation(trainer) -> bool:
    """True when the validation that just ran is the last one of the fit: the trainer stops after it.

    That is: it was asked to stop (``trainer.should_stop``, e.g. early stopping) with its minimum epochs and
    steps done; or ``max_steps`` is reached; or this validation ran at the end of the epoch numbered
    ``max_epochs``. Runs validated by ``val_check_interval`` or ``check_val_every_n_epoch`` whose last
    validation comes at the end are covered by the last two. When unsure it says ``False``: a run that stops
    for another reason (``max_time``, a non-finite loss) or whose last validation came before the end gets
    its table at the end of training instead (:meth:`LastValidationReport.at_train_end`).
    """
    if trainer.sanity_checking or trainer.state.fn != "fit":
        return False
    step, epoch = trainer.global_step, trainer.current_epoch
    if trainer.should_stop and epoch >= (trainer.min_epochs or 0) and step >= (trainer.min_steps or 0):
        return True
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps >= 0 and step >= max_steps:
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or epoch + 1 < max_epochs:
        return False
    ready = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    batches = trainer.num_training_batches
    return bool(trainer.is_last_batch) or ready >= batches


class LastValidationReport:
    """Prints a task's per-class report once per fit, after the fit's last validation.

    The task calls :meth:`remember` at the end of every validation epoch with what its report needs,
    :meth:`after_validation` from ``on_validation_end`` (after the callbacks' hooks: early stopping has
    decided, the checkpoint is written, the progress line is out) and :meth:`at_train_end` from
    ``on_train_end``. The report goes out at the first of: a validation after which the fit ends
    (:func:`fit_ends_after_this_validation`), or the end of training when the last validation was not
    recognized as the last one. ``report(*args, stage="val", step=...)`` runs on every rank (rank-zero
    printing is the report function's business).
    """

    def __init__(self) -> None:
        self.pending: tuple[int, tuple] | None = None

    def remember(self, trainer, *args) -> None:
        """The results of the validation that just ran (fit only, not the sanity check)."""
        if trainer is None or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.pending = (trainer.global_step, args)

    def after_validation(self, trainer, report: Callable[..., None]) -> None:
        if self.pending is not None and fit_ends_after_this_validation(trainer):
            self._emit(report)

    def at_train_end(self, report: Callable[..., None]) -> None:
        if self.pending is not None:
            self._emit(report)

    def _emit(self, report: Callable[..., None]) -> None:
        step, args = self.pending
        self.pending = None
        report(*args, stage="val", step=step)
