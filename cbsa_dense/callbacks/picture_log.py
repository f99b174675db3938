"""Send a picture to every logger of a run that takes images."""

from __future__ import annotations

import numpy as np
from lightning.pytorch import Trainer


def log_picture(trainer: Trainer, key: str, picture: np.ndarray) -> list[str]:
    """Log an ``(H, W, 3)`` uint8 picture under ``key`` to each of ``trainer.loggers`` that takes images.

    Through each logger's own API: ``log_image(key, images, step)`` (W&B, Neptune and other loggers with
    Lightning's image method), TensorBoard's ``experiment.add_image``, MLflow's
    ``experiment.log_image(run_id, image, artifact_file)``. Loggers without images (CSV) are skipped;
    the callbacks always write the picture to the run directory as well.

    Returns:
        The class names of the loggers that received the picture.
    """
    step = trainer.global_step
    reached = []
    for logger in trainer.loggers:
        if callable(getattr(logger, "log_image", None)):
            logger.log_image(key=key, images=[picture], step=step)
        else:
            experiment = getattr(logger, "experiment", None)
            if callable(getattr(experiment, "add_image", None)):
                experiment.add_image(key, picture, global_step=step, dataformats="HWC")
            elif callable(getattr(experiment, "log_image", None)) and getattr(logger, "run_id", None):
                experiment.log_image(logger.run_id, picture, f"{key}/step{step:07d}.png")
            else:
                continue
        reached.append(type(logger).__name__)
    return reached
