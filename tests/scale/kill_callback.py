"""Test helper: a callback that SIGKILLs its own training process at a given global step."""

import os
import signal

from lightning.pytorch import Callback


class KillAtStep(Callback):
    """SIGKILL the process when batch ``step`` starts (the checkpoint of step - 1 is on disk by then)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
