"""``predict``'s files, written by a Lightning ``BasePredictionWriter`` from what the tasks' ``predict_step``
returns (the tasks compute; this writes). The tasks add it themselves (``configure_callbacks``).

* Segmentation (``predict_step`` -> per image ``{"path", "labels"}``): ``<predict_dir>/labels/<stem>.png``, the
  labels in the dataset's annotation convention (``k + 1`` for ``reduce_zero_label`` data; the mask colours
  for colour-mask data), and ``<predict_dir>/overlays/<stem>.png``: the image at its own size with the class
  colours (opacity ``overlay_alpha``) over the pixels of every class not named like a background
  (:func:`~cbsa_dense.interpret.seg_overlay.draw_segmentation`; e.g. ``background``, ``other``: left as the
  photo) and a legend of the classes painted, by name, in the top-left corner.
* Detection (``predict_step`` -> ``{"detections", "image_ids", "results"}``): ``<results_dir>/overlays/<file>.png``
  per image (detections scoring at least the task's ``overlay_score_threshold``; ``overlays: false`` turns
  them off) and, at the end, ``<results_dir>/predictions.json`` (COCO results of all ranks, each image once).

Under DDP every process writes the pictures of its own images; a picture goes to a temporary name first and
is renamed, so two ranks given the same padded image never leave a half-written file.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image

from cbsa_dense.data.seg_labels import default_palette, read_image, to_annotation, write_label_png
from cbsa_dense.interpret.seg_overlay import draw_segmentation

__all__ = ["PredictionWriter"]


def _save_png(picture: np.ndarray, path: Path, rank: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{rank}.tmp")
    Image.fromarray(picture).save(partial, format="PNG")
    os.replace(partial, path)


def _datamodule_attr(trainer, name: str, default=None):
    value = getattr(getattr(trainer, "datamodule", None), name, None)
    return default if value is None else value


def class_names(trainer, task) -> list[str]:
    """The names of the task's classes: the datamodule's ``class_names``, else the checkpoint's
    (``task.data_info["class_names"]``), else ``class_0``, ``class_1``, ..."""
    names = _datamodule_attr(trainer, "class_names") or (getattr(task, "data_info", None) or {}).get("class_names")
    count = int(getattr(task, "num_classes", 0) or 0)
    return [str(n) for n in names] if names else [f"class_{i}" for i in range(count)]


class PredictionWriter(BasePredictionWriter):
    """Writes the label maps and overlays of segmentation, the overlays and results json of detection."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self._results: list[dict] = []
        self._targets: dict[int, tuple | None] = {}
        self._pictures = 0

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._results, self._targets, self._pictures = [], {}, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if isinstance(prediction, dict) and "detections" in prediction:
            self._results.extend(prediction["results"])
            if pl_module.overlays:
                self._detection_overlays(trainer, pl_module, prediction, dataloader_idx)
        else:
            self._segmentation_files(trainer, pl_module, prediction)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if hasattr(pl_module, "write_results"):                          # detection: the COCO results json
            pl_module.write_results(self._results, "predictions.json")
            if self._pictures:
                share = "" if trainer.world_size == 1 else " (this process's images; every process writes its own)"
                rank_zero_info(f"wrote {self._pictures} overlays (detections scoring >= "
                               f"{pl_module.overlay_score_threshold:g}) to "
                               f"{pl_module.results_folder() / 'overlays'}{share}")
        elif self._pictures:
            rank_zero_info(f"wrote {self._pictures} label maps and overlays to {pl_module.output_dir()}")

    # ------------------------------------------------------------------------------------ segmentation
    def _segmentation_files(self, trainer, task, prediction: list[dict]) -> None:
        out_dir = task.output_dir()
        palette = np.asarray(_datamodule_attr(trainer, "palette", default_palette(task.num_classes)), dtype=np.uint8)
        mask_palette = _datamodule_attr(trainer, "mask_palette")
        reduce_zero = bool(_datamodule_attr(trainer, "reduce_zero_label", False))
        names = class_names(trainer, task)
        for item in prediction:
            pred, stem = item["labels"], Path(item["path"]).stem
            label_path = out_dir / "labels" / f"{stem}.png"
            if mask_palette is not None:
                label_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(mask_palette, dtype=np.uint8)[pred]).save(label_path)
            else:
                values = to_annotation(pred, reduce_zero)
                png_palette = np.concatenate([np.zeros((1, 3), np.uint8), palette]) if reduce_zero else palette
                write_label_png(label_path, values, png_palette)
            picture = draw_segmentation(read_image(item["path"]), pred, names, palette, alpha=task.overlay_alpha)
            _save_png(picture, out_dir / "overlays" / f"{stem}.png", trainer.global_rank)
            self._pictures += 1

    # --------------------------------------------------------------------------------------- detection
    def _overlay_dataset(self, trainer, dataloader_idx: int):
        """The COCO-format dataset of the predict loader ``dataloader_idx`` (it knows each image id's file),
        or ``None`` (with a warning) for other datasets."""
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, list | tuple) else loaders
        dataset = getattr(loader, "dataset", None)
        if not (hasattr(dataset, "coco") and hasattr(dataset, "image_dir")):
            rank_zero_warn(f"no prediction overlays: the predict data ({type(dataset).__name__}) is not a COCO-format "
                           "dataset that names each image's file; set model overlays: false to silence this")
            return None
        return dataset

    def _overlay_targets(self, trainer, task, dataloader_idx: int) -> tuple | None:
        """The loader's dataset and its image id -> overlay path under ``<results folder>/overlays`` (computed
        once per predict epoch, the same on every rank): the json's ``file_name`` with a ``.png`` suffix
        (its stem alone when it leaves the image folder); names that two images would share get ``_<id>``."""
        if dataloader_idx not in self._targets:
            dataset = self._overlay_dataset(trainer, dataloader_idx)
            targets = None
            if dataset is not None:
                wanted = {}
                for image_id, info in dataset.coco.imgs.items():
                    name = Path(str(info["file_name"]))
                    inside = not name.is_absolute() and ".." not in name.parts
                    wanted[int(image_id)] = name.with_suffix(".png") if inside else Path(name.stem + ".png")
                counts = defaultdict(int)
                for name in wanted.values():
                    counts[name] += 1
                root = task.results_folder() / "overlays"
                targets = dataset, {
                    image_id: root / (name if counts[name] == 1 else name.with_name(f"{name.stem}_{image_id}.png"))
                    for image_id, name in wanted.items()}
            self._targets[dataloader_idx] = targets
        return self._targets[dataloader_idx]

    def _detection_overlays(self, trainer, task, prediction: dict, dataloader_idx: int) -> None:
        """Each image's detections scoring ``>= overlay_score_threshold``, drawn on its original file."""
        from cbsa_dense.interpret.det_overlay import draw_detections

        targets = self._overlay_targets(trainer, task, dataloader_idx)
        if targets is None:
            return
        dataset, paths = targets
        for pred, image_id in zip(prediction["detections"], prediction["image_ids"]):
            image = read_image(dataset.image_dir / dataset.coco.imgs[image_id]["file_name"])
            picture = draw_detections(image, pred["boxes"], pred["scores"], pred["labels"], task.class_names,
                                      task.overlay_score_threshold)
            _save_png(picture, paths[image_id], trainer.global_rank)
            self._pictures += 1
