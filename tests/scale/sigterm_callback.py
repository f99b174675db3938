"""Test helper: a callback that sends SIGTERM to its own training process (as a scheduler would)."""

import os
import signal

from lightning.pytorch import Callback


class TermAtStep(Callback):
    """Send SIGTERM during training batch ``step`` (Lightning's handler must be installed by then)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
                raise RuntimeError("Lightning installed no SIGTERM handler: refusing to kill the test process")
            os.kill(os.getpid(), signal.SIGTERM)
