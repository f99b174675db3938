"""Save a resumable checkpoint when the job is told to stop (SIGTERM: a scheduler's preemption)."""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from cbsa_dense.tasks.base import run_dir


class PreemptionCheckpoint(Callback):
    """On SIGTERM, write ``last.ckpt`` at the end of the current training batch and stop.

    Lightning's signal handler only records the SIGTERM; its loop then stops after the batch. This
    callback saves the full training state at that batch boundary (the same point where a
    ``ModelCheckpoint(every_n_train_steps=...)`` saves, so with :class:`ExactResume` and the project's
    resumable loaders ``fit --ckpt_path <that file>`` continues bit-identically). A SIGTERM that arrives
    during validation is saved when the loop stops (after the last finished training batch).

    The checkpoint goes to the ``ModelCheckpoint`` directory when there is one, else to
    ``<run dir>/checkpoints``; its path is printed. The ``cbsa-dense`` entry point adds this callback to
    every ``fit`` and exits with status 143 (128 + SIGTERM) after it ran.

    Args:
        filename: checkpoint file name inside that directory.
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename
        self.saved_path: Path | None = None

    def checkpoint_path(self, trainer: Trainer) -> Path:
        callback = trainer.checkpoint_callback
        directory = getattr(callback, "dirpath", None) if callback is not None else None
        return Path(directory or run_dir(trainer) / "checkpoints") / self.filename

    def _save(self, trainer: Trainer) -> None:
        if self.saved_path is not None:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        message = (f"received SIGTERM: saved a resumable checkpoint at global step {trainer.global_step} to "
                   f"{path}; resume with --ckpt_path {path}")
        rank_zero_info(message)
        if trainer.is_global_zero:
            print(f"cbsa-dense fit: {message}", file=sys.stderr)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if trainer.received_sigterm:
            self._save(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            self._save(trainer)
