"""Pictures reach every logger that takes images, each through its own API."""

from types import SimpleNamespace

import numpy as np
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cbsa_dense.callbacks.picture_log import log_picture


class WandbLike:
    """Lightning's WandbLogger image method: ``log_image(key, images, step)``."""

    def __init__(self):
        self.calls = []

    def log_image(self, key, images, step=None, **kwargs):
        self.calls.append((key, images, step))


class MlflowClientLike:
    def __init__(self):
        self.calls = []

    def log_image(self, run_id, image, artifact_file):
        self.calls.append((run_id, image, artifact_file))


class MLFlowLike:
    """Lightning's MLFlowLogger: ``experiment`` is an ``MlflowClient``, ``run_id`` the run."""

    def __init__(self):
        self.experiment = MlflowClientLike()
        self.run_id = "run-1"


def test_picture_reaches_each_image_logger_and_skips_csv(tmp_path):
    picture = np.zeros((8, 6, 3), np.uint8)
    wandb, mlflow = WandbLike(), MLFlowLike()
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    trainer = SimpleNamespace(global_step=7, loggers=[CSVLogger(tmp_path), wandb, mlflow, tensorboard])
    reached = log_picture(trainer, "val_predictions/0", picture)
    assert reached == ["WandbLike", "MLFlowLike", "TensorBoardLogger"]
    assert wandb.calls == [("val_predictions/0", [picture], 7)]
    assert mlflow.experiment.calls == [("run-1", picture, "val_predictions/0/step0000007.png")]
    tensorboard.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tensorboard.log_dir).Reload()
    assert events.Tags()["images"] == ["val_predictions/0"]
