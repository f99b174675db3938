"""A step of a fresh ``fit`` that runs once before the first training step (attention transfer, head warm-up)."""

from __future__ import annotations

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.utilities import rank_zero_info


class OnceBeforeTraining(Callback):
    """Holds whether the step ran (saved in checkpoints) and skips it, with a printed line, when ``fit`` resumes
    (``--ckpt_path``) or when the checkpoint it starts from says that it ran."""

    #: the step's name in its printed lines
    step_name = "step"

    def __init__(self) -> None:
        self.done = False

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state_dict: dict) -> None:
        self.done = bool(state_dict.get("done", False))

    def skipped(self, trainer: Trainer) -> bool:
        """True (and a printed line) when the step must not run: the run resumes, or it already ran."""
        if trainer.ckpt_path is not None:
            rank_zero_info(f"{self.step_name}: skipped (the run resumes from a checkpoint)")
            self.done = True
            return True
        if self.done:
            rank_zero_info(f"{self.step_name}: skipped (it has already run: its saved state says done)")
            return True
        return False
