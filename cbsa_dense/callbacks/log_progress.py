"""LogProgress: plain progress lines for a log file, where the Rich and tqdm bars show nothing useful."""

from __future__ import annotations

import math
import time
from datetime import timedelta

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


class LogProgress(ProgressBar):
    """A progress bar for files: one line every ``every_n_steps`` training steps, one per validation.

    ``cbsa-dense fit ... > train.log 2>&1`` (or a cluster scheduler) gives the progress bar no terminal: Rich then
    writes nothing until the run ends, tqdm rewrites one line with carriage returns. ``cbsa-dense`` uses this
    progress bar instead whenever stdout is not a terminal (:class:`~cbsa_dense.cli.lightning_cli.CBSADenseCLI`); a
    config may also list it under ``trainer.callbacks``. The lines (stdout, flushed, rank 0 only) count optimizer
    steps, the unit of the run's length, its learning-rate schedule and its checkpoints; the epoch follows as
    secondary information when ``max_epochs`` ends the run, and is left out when ``max_steps`` does (a 200-step
    run on a dataset of 4 batches goes through 50 epochs, which says little)::

        step 50/1200 (4%) | epoch 1/30 | train_loss 0.8123 | lr 0.001 | 2.41 s/step | elapsed 0:02:00 | eta 0:46:12
        validation at step 100/1200 (epoch 1/30): val_miou 0.4312, val_aacc 0.8101, val_macc 0.5210 | elapsed 0:04:10

        step 120/200 (60%) | train_loss 0.8123 | lr 0.0001 | 0.52 s/step | elapsed 0:01:02 | eta 0:00:41
        validation at step 100/200: val_miou 0.4312, val_aacc 0.8101, val_macc 0.5210 | elapsed 0:00:55

    The validation line has the task's aggregate metrics; the per-class ones (``val_iou_<class>``, the
    task's ``per_class_metric_keys``) go to the logger and to the table printed at the end of the fit.

    and, for ``validate``/``test``/``predict``, ``test batch 20/500 | elapsed ... | eta ...`` every
    ``every_n_steps`` batches (Lightning prints the metrics table at the end). The elapsed time, the speed and the
    ETA count from the start of this run (a resumed run from its checkpoint's step), validation time included.

    Args:
        every_n_steps: a line every this many steps (and at the last step); ``None`` = the trainer's
            ``log_every_n_steps``.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"LogProgress every_n_steps={every_n_steps}: use a positive number or null")
        self.every_n_steps = every_n_steps
        self._enabled = True
        self._start = time.monotonic()
        self._start_step = 0
        self._last_step = -1
        self._total_steps: float = math.inf
        self._steps_drive = False

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args, **kwargs) -> None:
        if self._enabled:
            print(*args, **{"flush": True, **kwargs})

    def _every(self, trainer: Trainer) -> int:
        return max(1, int(self.every_n_steps or trainer.log_every_n_steps or 1))

    def _times(self, done: int, total: float) -> str:
        elapsed = time.monotonic() - self._start
        text = f"elapsed {_clock(elapsed)}"
        if done > 0 and math.isfinite(total):
            text += f" | eta {_clock(elapsed / done * max(total - done, 0))}"
        return text

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()
        self._start_step = self._last_step = trainer.global_step
        self._total_steps = trainer.estimated_stepping_batches
        self._steps_drive = _steps_drive(trainer, self._total_steps)

    def _position(self, trainer: Trainer) -> tuple[str, str]:
        """``("step 50/1200 (4%)", "epoch 1/30")``; the epoch is ``""`` when ``max_steps`` ends the run."""
        step, total = trainer.global_step, self._total_steps
        of_total = f"/{int(total)} ({100 * step / total:.0f}%)" if math.isfinite(total) and total > 0 else ""
        if self._steps_drive:
            return f"step {step}{of_total}", ""
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"step {step}{of_total}", f"epoch {trainer.current_epoch + 1}{epochs}"

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step, total = trainer.global_step, self._total_steps
        if step == self._last_step or not (step % self._every(trainer) == 0 or step == total):
            return
        self._last_step = step
        parts = [part for part in self._position(trainer) if part]
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items()   # the validation line has val_*
                   if k != "v_num" and not k.startswith(("val_", "test_"))}
        parts += [f"{k} {_number(v)}" for k, v in metrics.items()]
        lrs = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        if lrs:
            parts.append(f"lr {max(lrs):.3g}")
        done = step - self._start_step
        if done > 0:
            parts.append(f"{(time.monotonic() - self._start) / done:.3g} s/step")
        parts.append(self._times(done, total))
        self.print(" | ".join(parts))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return                                    # validate/test: Lightning prints the metrics table
        total = self._total_steps
        of_total = f"/{int(total)}" if math.isfinite(total) and total > 0 else ""
        _, epoch = self._position(trainer)
        where = f"step {trainer.global_step}{of_total}" + (f" ({epoch})" if epoch else "")
        skip = set(getattr(pl_module, "per_class_metric_keys", None) or ())
        self.print(f"validation at {where}: {_metrics_text(trainer, 'val', skip)} | {self._times(0, math.inf)}")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != "fit":
            self._start = time.monotonic()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()

    def _eval_batch(self, trainer: Trainer, stage: str, batch_idx: int, dataloader_idx: int) -> None:
        if trainer.sanity_checking or trainer.state.fn == "fit":
            return                                    # fit: its validation gets one line, with the metrics
        done = batch_idx + 1
        batches = getattr(trainer, f"num_{stage}_batches")
        total = batches[dataloader_idx] if isinstance(batches, list) else batches
        if done % self._every(trainer) == 0 or done == total:
            of_total = f"/{int(total)}" if math.isfinite(total) else ""
            self.print(f"{stage} batch {done}{of_total} | {self._times(done, total)}")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, "val", batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, "test", batch_idx, dataloader_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, "predict", batch_idx, dataloader_idx)


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(round(seconds))))


def _number(value) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _steps_drive(trainer: Trainer, total: float) -> bool:
    """True when ``max_steps`` ends the run (no ``max_epochs``, or a step limit reached before it)."""
    max_steps = trainer.max_steps
    if max_steps is None or max_steps < 0:
        return False
    max_epochs = trainer.max_epochs
    return max_epochs is None or max_epochs < 0 or total == max_steps


def _metrics_text(trainer: Trainer, prefix: str, skip: set[str] | frozenset[str] = frozenset()) -> str:
    """The scalar ``<prefix>_*`` metrics logged so far but ``skip``: the progress-bar ones (the headline) first."""
    headline = [k for k in trainer.progress_bar_metrics if k.startswith(f"{prefix}_")]
    scalars = {k: v for k, v in trainer.callback_metrics.items()
               if k.startswith(f"{prefix}_") and k not in skip and (not isinstance(v, torch.Tensor) or v.numel() == 1)}
    keys = [k for k in headline if k in scalars] + sorted(k for k in scalars if k not in headline)
    return ", ".join(f"{k} {_number(scalars[k])}" for k in keys) or "no metrics logged"
