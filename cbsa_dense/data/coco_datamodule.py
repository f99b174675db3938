"""LightningDataModule over COCO (``train2017/``, ``val2017/``, ``annotations/``) or any COCO-format json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from cbsa_dense.data.coco_dataset import COCODetectionDataset, collate_detection, load_coco
from cbsa_dense.data.coco_validation import COCOFormatError
from cbsa_dense.data.det_transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransform
from cbsa_dense.data.global_batch import check_global_batch_size, resolve_batch_size
from cbsa_dense.data.loaders import train_loader, worker_count
from cbsa_dense.data.seeding import seed_worker
from cbsa_dense.data.seg_transforms import check_normalization, check_ratio_range
from cbsa_dense.errors import ConfigError, DataError
from cbsa_dense.tasks.eval_protocol import (
    DetEvaluation,
    Evaluation,
    check_against_training,
    eval_transform,
    evaluation_from,
)


def _empty_training_set(json_path: Path, coco) -> str:
    """The message for a training json that leaves no image to train on, with what was dropped and why."""
    n_images, n_anns = coco.source_counts
    kept_anns = coco.dataset["annotations"]
    crowd_only = sum(1 for i in coco.imgs if coco.imgToAnns.get(i) and
                     all(a.get("iscrowd", 0) for a in coco.imgToAnns[i]))
    without = len(coco.imgs) - sum(1 for i in coco.imgs if coco.imgToAnns.get(i))
    parts = [f"{n} x {reason}" for reason, n in coco.dropped.items()]
    dropped = f"dropped {', '.join(parts)}" if parts else "nothing was dropped"
    return (f"{json_path}: no training image left: the file has {n_images} images and {n_anns} annotations; "
            f"{dropped}; of the {len(coco.imgs)} images kept, {without} have no annotation and {crowd_only} only "
            f"crowd regions ({len(kept_anns)} annotations kept); training needs images with non-crowd objects: "
            "check train_json / train_images")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_settings(image_size, scale_range, hflip, min_box_size, mean, std, batch_size, eval_batch_size,
                    num_workers) -> None:
    """ConfigError naming the first invalid data setting (checked at construction, before any work)."""
    for name, value, low in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                             ("eval_batch_size", eval_batch_size, 1), ("num_workers", num_workers, 0)):
        if name == "eval_batch_size" and value is None:
            continue
        if not _is_int(value) or value < low:
            raise ConfigError(f"data {name}={value!r} is invalid: give an integer >= {low}"
                              + (" (or null: the training batch size)" if name == "eval_batch_size" else ""))
    check_ratio_range(scale_range, "scale_range")
    if not isinstance(hflip, (int, float)) or not 0 <= hflip <= 1:
        raise ConfigError(f"data hflip={hflip!r} is invalid: give a flip probability in [0, 1]")
    if not isinstance(min_box_size, (int, float)) or not 0 <= min_box_size < float("inf"):
        raise ConfigError(f"data min_box_size={min_box_size!r} is invalid: give a box side in pixels >= 0")
    check_normalization(mean, std)


#: How training crops are made (``train_mode``).
TRAIN_MODES = ("resize", "native")


class COCODetectionDataModule(LightningDataModule):
    """COCO-format detection data: validated jsons, LSJ training and resize+pad evaluation pipelines.

    Paths are relative to ``root`` when it is given. The category list (sorted by id) comes from the
    training json, or from the validation json when there is no training split; every split must
    declare the same categories. Contiguous label ``i`` is json category ``category_ids[i]``.

    Args:
        root: directory the other paths are relative to (``None``: paths as given).
        train_json: training annotations (``annotations/instances_train2017.json``).
        train_images: training image directory (``train2017``).
        val_json: validation annotations; also the test/predict default.
        val_images: validation image directory.
        test_json: test annotations (default: ``val_json``).
        test_images: test image directory (default: ``val_images``).
        predict_json: json whose ``images`` are predicted (``annotations`` and ``categories`` optional: an
            images-only json works; default: test, then val).
        predict_images: image directory of ``predict_json`` (default: test, then val images).
        image_size: side of the square training input (LSJ crop; the ``resize`` evaluation's side and the
            ``tiled`` evaluation's tile unless the protocol sets its own).
        evaluation: how validation, test and predict see an image: the task's protocol
            (:class:`~cbsa_dense.tasks.eval_protocol.DetEvaluation`, ``model.init_args.evaluation``), which the
            CLI links here; set it on the task, not here. ``None``: resize to ``image_size``. Its unset
            ``image_size`` / ``native_scale`` are this datamodule's.
        train_mode: how training crops are made. ``resize`` (default, ViTDet's large-scale jitter): the
            longest side resized to ``image_size x U(scale_range)``, then an ``image_size`` crop. ``native``:
            the original image scaled by ``U(scale_range)`` (e.g. [0.8, 1.25]), then an ``image_size`` crop:
            objects keep their pixel size, so small crops (cheap steps) of large photos train a model for
            evaluation ``mode`` ``native`` or ``tiled``, which it requires.
        native_scale: with ``train_mode: native``: the photos are scaled by this first (2.0: objects twice their
            pixel size; for objects only two or three patches wide, which a pretrained ViT's last layer barely
            separates). Training jitters around it (``scale_range`` times it); a ``native`` / ``tiled``
            evaluation uses it unless its protocol sets its own.
        scale_range: large-scale-jitter scale range in training.
        hflip: horizontal flip probability in training.
        min_box_size: training boxes smaller than this (pixels, after augmentation) are dropped.
        mean: per-channel normalization mean of [0, 1] pixels.
        std: per-channel normalization std of [0, 1] pixels.
        with_masks: load instance masks (polygons or RLE) for mask heads and segm evaluation.
        drop_invalid: drop (and log counts of) invalid annotations and missing images instead of failing
            (see :func:`~cbsa_dense.data.coco_dataset.validate_coco`; duplicate ids, invalid JSON and other
            structural problems always fail, and so does a training set left empty).
        allow_outside_root: accept image ``file_name``s that point outside their image directory (``..``,
            absolute paths); by default such a json is rejected.
        batch_size: training batch size per device (per DataLoader).
        eval_batch_size: validation/test/predict batch size (default: the per-device training batch).
        global_batch_size: training batch per optimizer step over all devices, as papers state it; when
            set, the per-device batch is ``global_batch_size / (world size x accumulate_grad_batches)``,
            computed at setup (an error when it does not divide; see :mod:`cbsa_dense.data.global_batch`).
            Leave ``batch_size`` at its default when using it.
        num_workers: DataLoader workers (each reseeds the augmentation, see ``seed_worker``), at most the CPUs
            this process may use (:func:`~cbsa_dense.data.loaders.worker_count`: more would only take turns on
            the same cores; the cap is silent).
    """

    def __init__(self, root: str | None = None, train_json: str | None = None, train_images: str | None = None,
                 val_json: str | None = None, val_images: str | None = None, test_json: str | None = None,
                 test_images: str | None = None, predict_json: str | None = None,
                 predict_images: str | None = None, image_size: int = 1024, evaluation: Evaluation | None = None,
                 train_mode: str = "resize", native_scale: float = 1.0,
                 scale_range: tuple[float, float] = (0.1, 2.0), hflip: float = 0.5, min_box_size: float = 1.0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 with_masks: bool = False, drop_invalid: bool = False, batch_size: int = 2,
                 eval_batch_size: int | None = None, num_workers: int = 2, allow_outside_root: bool = False,
                 global_batch_size: int | None = None) -> None:
        super().__init__()
        _check_settings(image_size=image_size, scale_range=scale_range, hflip=hflip, min_box_size=min_box_size,
                        mean=mean, std=std, batch_size=batch_size, eval_batch_size=eval_batch_size,
                        num_workers=num_workers)
        check_global_batch_size(self, global_batch_size, batch_size)
        self.save_hyperparameters(ignore=["evaluation"])     # the task stores the protocol
        self.root = root
        self.splits = {
            "train": (train_json, train_images),
            "val": (val_json, val_images),
            "test": (test_json or val_json, test_images or val_images),
            "predict": (predict_json or test_json or val_json, predict_images or test_images or val_images),
        }
        for split, (json_path, images) in self.splits.items():
            if (json_path is None) != (images is None):
                raise ConfigError(f"data {split}_json / {split}_images: give both the json and the image directory "
                                  f"(got {json_path!r}, {images!r})")
        self.image_size = image_size
        if train_mode not in TRAIN_MODES:
            raise ConfigError(f"data train_mode={train_mode!r} is invalid: give one of {', '.join(TRAIN_MODES)}")
        self.train_mode = train_mode
        if isinstance(native_scale, bool) or not isinstance(native_scale, (int, float)) or not 0 < native_scale <= 8:
            raise ConfigError(f"data native_scale={native_scale!r} is invalid: give a factor in (0, 8]")
        self.native_scale = float(native_scale)
        self.evaluation = self.resolve_evaluation(evaluation_from(DetEvaluation, evaluation) or DetEvaluation())
        check_against_training(self.evaluation, {"train_mode": train_mode}, where=type(self).__name__)
        self.scale_range = tuple(scale_range)
        self.hflip = hflip
        self.min_box_size = min_box_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.with_masks = with_masks
        self.drop_invalid = drop_invalid
        self.allow_outside_root = allow_outside_root
        self.batch_size = batch_size
        self.global_batch_size = global_batch_size
        self._eval_batch_size = eval_batch_size
        self._batch_resolved = False
        self.num_workers = worker_count(num_workers)
        self.datasets: dict[str, COCODetectionDataset] = {}
        self.category_ids: list[int] = []
        self.class_names: list[str] = []

    #: the protocol this datamodule's evaluation transform follows (the task of the same kind declares it too)
    evaluation_type = DetEvaluation

    def resolve_evaluation(self, protocol: DetEvaluation) -> DetEvaluation:
        """``protocol`` with its unset ``image_size`` / ``native_scale`` taken from this datamodule."""
        return protocol.resolve(self.image_size, self.native_scale)

    @property
    def eval_batch_size(self) -> int:
        """Validation/test/predict batch: ``eval_batch_size``, else the per-device training batch (with
        ``global_batch_size`` outside training: its share per device, rounded down, never an error)."""
        if self._eval_batch_size:
            return self._eval_batch_size
        if self.global_batch_size is not None and not self._batch_resolved:
            world = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
            return max(1, self.global_batch_size // max(1, int(world)))
        return self.batch_size

    @eval_batch_size.setter
    def eval_batch_size(self, value: int | None) -> None:
        self._eval_batch_size = value

    def _resolve_batch_size(self) -> int:
        self.batch_size = resolve_batch_size(self, self.global_batch_size, self.batch_size)
        self._batch_resolved = True
        return self.batch_size

    def _path(self, path: str) -> Path:
        return Path(self.root) / path if self.root is not None else Path(path)

    @property
    def num_classes(self) -> int | None:
        """Number of object categories: those of the annotation jsons. Before :meth:`setup` they are read from
        the smallest configured json that exists (every split must declare the same categories; setup
        checks it); ``None`` when no json declares any (e.g. an images-only json to predict)."""
        if not self.category_ids:
            self._peek_categories()
        return len(self.category_ids) or None

    def _peek_categories(self) -> None:
        import json

        paths = {self._path(json_path) for json_path, _ in self.splits.values() if json_path is not None}
        if paths and not any(p.is_file() for p in paths):
            raise DataError(f"no annotation json found: {', '.join(sorted(map(str, paths)))} "
                            f"{'does' if len(paths) == 1 else 'do'} not exist (the categories, and so the class "
                            "count, come from them); check data root and the *_json paths")
        for path in sorted((p for p in paths if p.is_file()), key=lambda p: p.stat().st_size):
            try:
                ids, names = _categories(json.loads(path.read_text()).get("categories") or [])
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                continue                            # setup reads it properly and names what is wrong
            if ids:
                self.category_ids, self.class_names = ids, names
                return

    def _set_categories(self, coco, json_path: Path) -> None:
        if not coco.dataset["categories"]:  # an images-only json to predict: categories come from elsewhere
            return
        ids, names = _categories(coco.dataset["categories"])
        if not self.category_ids:
            self.category_ids, self.class_names = ids, names
        elif ids != self.category_ids:
            raise COCOFormatError(f"{json_path}: categories {ids} differ from the first split's {self.category_ids}; "
                                  "every split must declare the same categories")

    def _dataset(self, split: str) -> COCODetectionDataset | None:
        json_path, images = self.splits[split]
        if json_path is None:
            return None
        json_path, images = self._path(json_path), self._path(images)
        coco = load_coco(json_path, images, drop_invalid=self.drop_invalid, require_annotations=split != "predict",
                         check_masks=self.with_masks, allow_outside_root=self.allow_outside_root)
        self._set_categories(coco, json_path)
        train = split == "train"
        transform = (DetectionTransform(self.image_size, train=True, scale_range=self.scale_range,
                                        hflip=self.hflip, min_box_size=self.min_box_size, mean=self.mean,
                                        std=self.std, native=self.train_mode == "native",
                                        native_scale=self.native_scale)
                     if train else eval_transform(self.evaluation, self.mean, self.std))
        dataset = COCODetectionDataset(coco, images, self.category_ids, transform, train=train,
                                       with_masks=self.with_masks, with_gt=split != "train")
        if train and not len(dataset):
            raise DataError(_empty_training_set(json_path, coco))
        return dataset

    def setup(self, stage: str | None = None) -> None:
        """Load and validate the jsons the stage needs (categories come from the training json first)."""
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}
        order = ["train", "val", "test", "predict"]
        splits = wanted.get(stage, order) if stage else order
        if self.global_batch_size is not None and stage in (None, "fit"):
            self._resolve_batch_size()
        if not self.category_ids and "train" not in splits and self.splits["train"][0] is not None:
            splits = ["train", *splits]  # category order is the training json's
        for split in splits:
            if split not in self.datasets:
                dataset = self._dataset(split)
                if dataset is not None:
                    self.datasets[split] = dataset
        for split in wanted.get(stage, []) if stage else []:
            if split not in self.datasets:
                raise ConfigError(f"stage {stage!r} needs data {split}_json and {split}_images (or val_json and "
                                  "val_images); set them in the data config")

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        dataset = self.datasets[split]
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle and len(dataset) > batch_size,
                          num_workers=self.num_workers, collate_fn=collate_detection,
                          worker_init_fn=seed_worker,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a resumable, epoch-seeded sampler with per-sample seeded augmentation, so a run
        killed mid-epoch resumes exactly (with :class:`~cbsa_dense.callbacks.ExactResume`)."""
        dataset = self.datasets["train"]
        batch_size = self._resolve_batch_size()
        return train_loader(dataset, batch_size, self.num_workers, collate_fn=collate_detection,
                            drop_last=len(dataset) > batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", False, self.eval_batch_size)


def _categories(categories: list[dict]) -> tuple[list, list[str]]:
    """Category ids in increasing order (label k = the k-th id) and their names (the id when unnamed)."""
    ordered = sorted(categories, key=lambda c: c["id"])
    return [c["id"] for c in ordered], [str(c.get("name", c["id"])) for c in ordered]
