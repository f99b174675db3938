"""ADE20K (SceneParsing, ``ADEChallengeData2016``) as MMSegmentation and Segmenter use it."""

from __future__ import annotations

from pathlib import Path

from cbsa_dense.data.seg_datamodule import SegDataModule
from cbsa_dense.data.seg_dataset import list_images, pair_by_stem
from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD
from cbsa_dense.errors import DataError
from cbsa_dense.tasks.eval_protocol import Evaluation

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence",
    "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

#: ADE20K split name -> folder name under ``images/`` and ``annotations/`` (no labelled test split:
#: ``test`` evaluates the validation images, as mmseg does).
ADE20K_SPLITS = {"train": "training", "val": "validation", "test": "validation"}


class ADE20KDataModule(SegDataModule):
    """ADE20K with the mmseg/Segmenter recipe.

    Expects ``root/images/{training,validation}/*.jpg`` and ``root/annotations/{training,validation}/*.png``
    (same stems; ``root`` is the ``ADEChallengeData2016`` folder). Annotations are reduced
    (``reduce_zero_label``: 0 = "other" is ignored, k -> k - 1); a value above ``num_classes`` is an error
    naming the file.

    Args:
        root: the ``ADEChallengeData2016`` folder.
        num_classes: 150 for ADE20K.
        class_names: defaults to ADE20K's 150 names when ``num_classes`` is 150.
        crop_size: training crop (512 x 512; 640 x 640 for ViT-L in the paper).
        scale: ratio-range resize base (2048, 512); (2560, 640) for 640 crops.
        evaluation: the task's evaluation protocol, linked here by the CLI (``None``: resize to (2048, 512),
            whole image); for 640 crops the paper evaluates at ``scale: [2560, 640]``.
        mean: normalization mean; Segmenter's ViTs use (0.5, 0.5, 0.5).
        std: normalization std; Segmenter's ViTs use (0.5, 0.5, 0.5).
        global_batch_size: the paper's "batch 8": the total per optimizer step, divided over the devices
            (and gradient accumulation) at setup; leave ``batch_size`` (per device) at its default then.
        **kwargs: the remaining :class:`~cbsa_dense.data.seg_datamodule.SegDataModule` arguments.
    """

    def __init__(self, root: str = "data/ADEChallengeData2016", num_classes: int = 150,
                 class_names: list[str] | None = None, batch_size: int = 8, val_batch_size: int = 1,
                 num_workers: int = 4, crop_size: tuple[int, int] = (512, 512),
                 scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, photometric: bool = True,
                 evaluation: Evaluation | None = None,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 validate_labels: bool = True, predict_images: str | None = None,
                 palette: list[list[int]] | None = None, global_batch_size: int | None = None) -> None:
        if class_names is None and num_classes == len(ADE20K_CLASSES):
            class_names = list(ADE20K_CLASSES)
        super().__init__(num_classes=num_classes, class_names=class_names, palette=palette,
                         reduce_zero_label=True, batch_size=batch_size, val_batch_size=val_batch_size,
                         num_workers=num_workers, crop_size=crop_size, scale=scale, ratio_range=ratio_range,
                         cat_max_ratio=cat_max_ratio, photometric=photometric, evaluation=evaluation, mean=mean,
                         std=std, validate_labels=validate_labels, predict_images=predict_images,
                         global_batch_size=global_batch_size)
        self.save_hyperparameters(ignore=["evaluation"])          # the task stores the protocol
        self.root = Path(root)

    def split_samples(self, split: str) -> list[tuple[Path, Path | None]]:
        folder = ADE20K_SPLITS[split]
        images_dir = self.root / "images" / folder
        if not images_dir.is_dir():
            raise DataError(f"ADE20K folder {images_dir} does not exist: root={self.root} must be the "
                            f"ADEChallengeData2016 folder (images/{folder}, annotations/{folder})")
        return pair_by_stem(list_images(images_dir), self.root / "annotations" / folder)
