"""Shared LightningDataModule of the semantic-segmentation datasets (ADE20K, folders, demo).

Subclasses only say where the (image, mask) pairs of each split are (:meth:`split_samples`); this class
builds the mmseg pipelines, validates the labels, and serves the loaders. Validation and test samples
carry their mask at the ORIGINAL size: the task resizes its logits back before scoring.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from cbsa_dense.data.global_batch import check_global_batch_size, resolve_batch_size
from cbsa_dense.data.loaders import eval_loader, train_loader, worker_count
from cbsa_dense.data.predict_images import find_images
from cbsa_dense.data.seeding import seed_worker
from cbsa_dense.data.seg_dataset import SegDataset, seg_collate
from cbsa_dense.data.seg_labels import IGNORE_INDEX, check_unique_names, default_palette
from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD, SegTrainTransform
from cbsa_dense.errors import ConfigError
from cbsa_dense.tasks.eval_protocol import Evaluation, SegEvaluation, eval_transform, evaluation_from


class SegDataModule(LightningDataModule):
    """Base datamodule; see the subclasses for the arguments that locate the data.

    Args:
        num_classes: number of classes (after ``reduce_zero_label``), at most 255.
        class_names: one name per class (``None``: "class_0", ...).
        palette: (C, 3) display colours for overlays (``None``: generated).
        reduce_zero_label: annotation 0 means "unlabelled" and class k is stored as k + 1.
        ignore_index: the annotations' ignore value (mapped to 255 internally).
        batch_size: training batch size per device (per DataLoader).
        global_batch_size: training batch per optimizer step over all devices, as papers state it
            ("batch 8"); when set, the per-device batch is ``global_batch_size / (world size x
            accumulate_grad_batches)``, computed at setup (an error when it does not divide; see
            :mod:`cbsa_dense.data.global_batch`). Leave ``batch_size`` at its default when using it.
        val_batch_size: evaluation batch size (images of different sizes are handled one by one).
        num_workers: DataLoader workers (each reseeds its augmentation RNG), at most the CPUs this process may
            use (:func:`~cbsa_dense.data.loaders.worker_count`: more would only take turns on the same cores; the
            cap is silent).
        crop_size: (height, width) of training crops (positive).
        scale: (long, short) base scale of the training ratio-range resize (positive).
        ratio_range: random factor range of ``scale``, ``0 < low <= high``.
        cat_max_ratio: max fraction of a single class in a training crop, in (0, 1].
        class_balanced_crops: fraction of training crops centred on a class drawn uniformly among the image's
            classes (:class:`~cbsa_dense.data.seg_transforms.SegTrainTransform`); 0 disables it.

    Invalid sizes, ranges and normalization constants raise a :class:`~cbsa_dense.errors.ConfigError`
    naming the setting at construction. Images of any size and shape are accepted: a very thin image is
    resized to at least one pixel across and padded to the crop.
        photometric: photometric distortion in training.
        evaluation: the task's evaluation protocol (:class:`~cbsa_dense.tasks.eval_protocol.SegEvaluation`,
            ``model.init_args.evaluation``), which the CLI links here: its ``scale`` resizes the evaluation
            images. Set it on the task, not here; ``None``: :attr:`default_evaluation`.
        mean: normalization mean (images in [0, 1]).
        std: normalization std (images in [0, 1]).
        validate_labels: read every mask of the used splits at setup and fail on values outside the
            classes (masks are also checked each time they are loaded).
        predict_images: the images to predict on: a folder, one image file, or a glob pattern (quote it on
            the command line); ``None`` predicts on the validation split.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None,
                 palette: list[list[int]] | None = None, reduce_zero_label: bool = False,
                 ignore_index: int = IGNORE_INDEX, batch_size: int = 8, val_batch_size: int = 1,
                 num_workers: int = 4, crop_size: tuple[int, int] = (512, 512),
                 scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, photometric: bool = True,
                 evaluation: Evaluation | None = None,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 validate_labels: bool = True, predict_images: str | None = None,
                 global_batch_size: int | None = None, class_balanced_crops: float = 0.0) -> None:
        super().__init__()
        if not 1 <= num_classes <= 255:
            raise ConfigError(f"num_classes={num_classes} is invalid: must be in [1, 255] (255 is the ignore "
                              f"value)")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        check_unique_names(self.class_names, "class_names")
        if len(self.class_names) != num_classes:
            raise ConfigError(f"class_names: {len(self.class_names)} names given for num_classes={num_classes}; "
                              f"give one name per class")
        self.palette = np.asarray(palette, dtype=np.uint8) if palette is not None else default_palette(num_classes)
        if self.palette.shape != (num_classes, 3):
            raise ConfigError(f"palette must be {num_classes} RGB triplets (one per class), got shape "
                              f"{self.palette.shape}")
        for name, value, low in (("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1),
                                 ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{name}={value!r} is invalid: give an integer >= {low}")
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        check_global_batch_size(self, global_batch_size, batch_size)
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = worker_count(num_workers)
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_transform = SegTrainTransform(crop_size, scale, ratio_range, cat_max_ratio,
                                                 photometric=photometric, mean=mean, std=std,
                                                 class_balanced_crops=class_balanced_crops)
        self.evaluation = evaluation_from(SegEvaluation, evaluation) or self.default_evaluation
        self.eval_transform = eval_transform(self.evaluation, mean, std)
        self.validate_labels = validate_labels
        self.predict_images = predict_images
        self.mask_palette: np.ndarray | None = None
        self.datasets: dict[str, SegDataset] = {}

    #: the protocol this datamodule's evaluation transform follows (the task of the same kind declares it too)
    evaluation_type = SegEvaluation
    #: the protocol without one given: mmseg's ADE20K evaluation, (2048, 512) resize, whole image
    default_evaluation = SegEvaluation()

    def split_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        """(image, mask) pairs of ``split`` in {"train", "val", "test"}; implemented by subclasses."""
        raise NotImplementedError

    def make_dataset(self, split: str) -> SegDataset:
        if split == "predict" and self.predict_images is not None:
            samples = [(p, None) for p in find_images(self.predict_images, "--data.init_args.predict_images")]
        else:
            samples = self.split_samples("val" if split == "predict" else split)
        transform = self.train_transform if split == "train" else self.eval_transform
        dataset = SegDataset(samples, transform, self.num_classes, self.reduce_zero_label, self.ignore_index,
                             self.mask_palette)
        if self.validate_labels and split != "predict":
            masks = [m for _, m in samples if m is not None]
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(dataset.load_mask, masks))
        return dataset

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"],
                  None: ["train", "val"]}[stage]
        if "train" in splits:
            self.batch_size = resolve_batch_size(self, self.global_batch_size, self.batch_size)
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.datasets[split] = self.make_dataset(split)
        if split != "predict":
            # Under DDP: shards with the padding repeats marked, so the dataset-level confusion matrix counts
            # each image once (one process: the plain in-order loader below, unchanged).
            return eval_loader(self.datasets[split], self.val_batch_size, self.num_workers, collate_fn=seg_collate)
        # predict: Lightning shards it over DDP ranks without repeats (``UnrepeatedDistributedSamplerWrapper``)
        return DataLoader(self.datasets[split], batch_size=self.val_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=seg_collate, worker_init_fn=seed_worker,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a resumable, epoch-seeded sampler with per-sample seeded augmentation, so a run
        killed mid-epoch resumes exactly (with :class:`~cbsa_dense.callbacks.ExactResume`)."""
        if "train" not in self.datasets:
            self.datasets["train"] = self.make_dataset("train")
        dataset = self.datasets["train"]
        self.batch_size = resolve_batch_size(self, self.global_batch_size, self.batch_size)
        return train_loader(dataset, self.batch_size, self.num_workers, collate_fn=seg_collate,
                            drop_last=len(dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
