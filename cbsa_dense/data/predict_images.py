"""Images to predict with a checkpoint alone: a folder, one file, or a glob; nothing about the training data.

``cbsa-dense predict --ckpt_path m.ckpt --images photos/`` uses it (``--images`` stands for ``--data
PredictImagesDataModule --data.init_args.images``). What the training data would have said comes from the
model the checkpoint rebuilds: class names, palette and label convention (``data_info``), the normalization,
and the evaluation protocol (the task's ``evaluation``, linked here by the CLI). Its loader is built when
Lightning asks for it, after the checkpoint is restored into the model.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
from pathlib import Path

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from cbsa_dense.data.seeding import seed_worker
from cbsa_dense.data.seg_dataset import IMAGE_SUFFIXES, list_images
from cbsa_dense.errors import ConfigError, DataError
from cbsa_dense.tasks.eval_protocol import Evaluation, SegEvaluation, eval_transform


def find_images(images: str | Path, setting: str = "--images") -> list[Path]:
    """The image files ``images`` names: a folder (its images, sorted), one image file, or a glob pattern
    (``photos/*.jpg``, ``**`` recursive). DataError naming ``setting`` and the value when it names no image."""
    text = str(images)
    path = Path(text)
    if path.is_dir():
        return list_images(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{setting} {text}: {path.name} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        return [path]
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{setting} {text}: the pattern matches no image file ({', '.join(IMAGE_SUFFIXES)})")
        return found
    raise DataError(f"{setting} {text}: no such file or folder (give a folder of images, an image file or a glob "
                    "such as 'photos/*.jpg')")


class PredictImagesDataModule(LightningDataModule):
    """Predict-only data: the images ``images`` names, read and transformed as the model's checkpoint says.

    Args:
        images: a folder of images, an image file, or a glob pattern (quote it on the command line).
        batch_size: images per batch (images of different sizes are padded (detection) or run one by one
            (segmentation)).
        num_workers: DataLoader workers.
        evaluation: the task's protocol, linked here by the CLI; ``None``: the model's own.
    """

    #: both kinds: the protocol is the model's
    evaluation_type = None

    def __init__(self, images: str, batch_size: int = 1, num_workers: int = 0,
                 evaluation: Evaluation | None = None) -> None:
        super().__init__()
        for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data {name}={value!r} is invalid: give an integer >= {low}")
        self.files = find_images(images)
        self.images = str(images)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.evaluation = evaluation

    @property
    def num_classes(self) -> None:
        """Unknown here: the checkpoint's class count is used."""
        return None

    def _model(self):
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if model is None or getattr(model, "evaluation", None) is None:
            raise ConfigError("PredictImagesDataModule predicts with a segmentation or detection task restored from "
                              "a checkpoint: give --ckpt_path")
        return model

    def _info(self, key: str, default=None):
        return (getattr(self._model(), "data_info", None) or {}).get(key, default)

    # What the segmentation task asks a datamodule for when it writes predictions: the training data's.
    @property
    def palette(self):
        return self._info("palette")

    @property
    def reduce_zero_label(self) -> bool:
        return bool(self._info("reduce_zero_label", False))

    @property
    def class_names(self):
        return self._info("class_names")

    mask_palette = None

    def setup(self, stage: str | None = None) -> None:
        if stage not in (None, "predict"):
            raise ConfigError(f"PredictImagesDataModule only predicts (it has no labels), not {stage}: give the "
                              "training data config (--config or --data ...) to validate or test")

    def predict_dataloader(self) -> DataLoader:
        from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD

        model = self._model()
        protocol = self.evaluation if self.evaluation is not None else model.evaluation
        mean, std = self._info("mean") or IMAGENET_MEAN, self._info("std") or IMAGENET_STD
        transform = eval_transform(protocol, mean, std)
        if isinstance(protocol, SegEvaluation):
            from cbsa_dense.data.seg_dataset import SegDataset, seg_collate

            dataset = SegDataset([(p, None) for p in self.files], transform, int(model.num_classes))
            collate = seg_collate
        else:
            from pycocotools.coco import COCO

            from cbsa_dense.data.coco_dataset import COCODetectionDataset, collate_detection

            files = [p.resolve() for p in self.files]
            root = Path(os.path.commonpath([str(p.parent) for p in files]))
            coco = COCO()
            coco.dataset = {"images": [{"id": i + 1, "file_name": str(p.relative_to(root))}
                                       for i, p in enumerate(files)], "annotations": [], "categories": []}
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            dataset = COCODetectionDataset(coco, root, list(model.category_ids), transform, train=False,
                                           with_gt=False)
            collate = collate_detection
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate, worker_init_fn=seed_worker, persistent_workers=self.num_workers > 0)

