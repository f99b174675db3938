"""COCO json checks: read a json, validate an instances dict (fail on, or drop, what would corrupt training
or evaluation), the entry checks that scoring shares (boxes, segmentations, RLE strings, areas) and the
mask decoding they and the dataset use.

:func:`cbsa_dense.data.coco_dataset.load_coco` reads and validates a json into a pycocotools index.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from cbsa_dense.errors import DataError

log = logging.getLogger(__name__)

#: Slack, in pixels, for boxes reaching past the image border (COCO has sub-pixel overshoots).
BORDER_TOLERANCE = 1.0


class COCOFormatError(DataError):
    """A COCO json that cannot be trained on, evaluated or scored as it is (a :class:`DataError`)."""


#: Annotation problems that ``drop_invalid`` may drop (one annotation or image at a time). Everything else
#: (not a COCO object, duplicate ids, a ``file_name`` outside the image folder, invalid JSON) is always an error.
DROPPABLE = ("missing image file", "unknown image_id", "unknown category_id", "malformed bbox", "zero-area bbox",
             "bbox outside image", "malformed area", "malformed iscrowd", "malformed segmentation",
             "segmentation size differs from image")

_DROP_HINT = "fix the entry, or set drop_invalid: true in the data config to drop such entries"
_FIX_HINT = "fix the entry"


def read_json(path: str | Path) -> Any:
    """Parse a json file; a syntax error is a :class:`COCOFormatError` naming the file, line and column."""
    path = Path(path)
    if not path.is_file():
        state = "is a directory, not a json file" if path.is_dir() else "file does not exist"
        raise COCOFormatError(f"{path}: {state}; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise COCOFormatError(f"{path}: cannot read it as UTF-8 text ({err}); give a json file") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise COCOFormatError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}; fix the "
                              f"file (python -m json.tool {path} shows the same position)") from err


def _is_number(value: Any) -> bool:
    """A finite real number (bool and NaN/inf excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (object, array, string, number, boolean, null)."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null", int: "number",
             float: "number"}
    return names.get(type(value), type(value).__name__)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def bbox_problem(box: Any) -> str | None:
    """Why ``box`` is not a COCO ``[x, y, w, h]`` of four finite numbers (``None`` when it is)."""
    if not isinstance(box, list | tuple) or len(box) != 4:
        return "expected [x, y, w, h]"
    bad = [v for v in box if not _is_number(v)]
    if bad:
        return f"value {bad[0]!r} is not a finite number"
    return None


def rle_string_counts(text: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in Python), or ``None``
    when the string is not one: pycocotools reads past the end of a malformed string and can crash the
    process, so strings are checked here before pycocotools sees them."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value = shift = 0
        more = True
        while more:
            if position >= len(text):
                return None                            # a run cut off in the middle
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                return None                            # not a character of the encoding ('0'..'o')
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def segmentation_problem(segm: Any, height: int | None, width: int | None) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``segm`` is not a valid COCO polygon list or RLE for an image of that size."""
    if isinstance(segm, list):
        for part in segm:
            if not isinstance(part, list | tuple) or not all(_is_number(v) for v in part):
                return "malformed segmentation", f"polygon {_short(part)} is not a list of finite numbers"
            if len(part) % 2:
                return "malformed segmentation", f"polygon {_short(part)} has an odd number ({len(part)}) of coordinates"
            if len(part) < 6:
                return "malformed segmentation", (f"polygon {_short(part)} has {len(part) // 2} points, fewer than "
                                                  "the 3 a polygon needs")
        return None
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, list | tuple) and len(size) == 2 and all(_is_id(v) and v >= 0 for v in size)):
            return "malformed segmentation", f"RLE size {_short(size)} is not [height, width]"
        if not (isinstance(counts, str) or isinstance(counts, list) and all(_is_id(v) and v >= 0 for v in counts)):
            return "malformed segmentation", f"RLE counts {_short(counts)} is neither a string nor a list of counts"
        if isinstance(counts, str):
            decoded = rle_string_counts(counts)
            if decoded is None or any(v < 0 for v in decoded):
                return "malformed segmentation", (f"RLE counts {_short(counts)} is not a valid compressed RLE string "
                                                  "(pycocotools.mask.encode writes them)")
            counts = decoded
        if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
            return "malformed segmentation", (f"RLE counts sum to {sum(counts)}, not height x width = "
                                              f"{size[0] * size[1]} of its size {list(size)}")
        if height is not None and width is not None and list(size) != [height, width]:
            return "segmentation size differs from image", (f"RLE size {list(size)} (height, width) differs from its "
                                                            f"image's {height}x{width} (height x width)")
        return None
    return "malformed segmentation", f"segmentation {_short(segm)} is neither a polygon list nor an RLE object"


def fill_area(ann: dict, height: int | None, width: int | None, from_mask: bool) -> dict:
    """A copy of ``ann`` with ``area`` when it has none: the mask area (``from_mask``, needs the image size) or
    the box's ``w * h``, as pycocotools' ``loadRes`` computes it for results."""
    if "area" in ann:
        return ann
    segm = ann.get("segmentation")
    if from_mask and segm and height is not None and width is not None:
        area = float(annotation_mask(segm, height, width).sum())
    else:
        area = float(ann["bbox"][2] * ann["bbox"][3])
    return {**ann, "area": area}


def validate_coco(dataset: Any, json_path: str | Path, image_dir: str | Path | None = None,
                  drop_invalid: bool = False, *, require_annotations: bool = True, check_masks: bool = False,
                  check_geometry: bool = True, allow_outside_root: bool = False,
                  drop_hint: bool = True) -> tuple[dict, Counter]:
    """Check a COCO instances dict; fail on, or drop, what would corrupt training or evaluation.

    Always errors (structure): the top level is not an object; ``images`` / ``annotations`` /
    ``categories`` are not lists (``annotations`` and ``categories`` may be absent with
    ``require_annotations=False``, e.g. a json of images to predict); an entry is not an object or lacks its
    integer ``id``; duplicate image, annotation or category ids; an image without ``file_name`` (with
    ``image_dir``) or whose ``file_name`` leaves ``image_dir`` (``..``, absolute paths) unless
    ``allow_outside_root``.

    Per-annotation problems (raised, or dropped and counted with ``drop_invalid``; see :data:`DROPPABLE`):
    missing image files (with ``image_dir``), undeclared ``image_id`` / ``category_id``, a ``bbox`` that is
    not four finite numbers, a non-numeric ``area`` or ``iscrowd``, zero-area and out-of-image boxes (beyond
    :data:`BORDER_TOLERANCE`; only with ``check_geometry``), and, with ``check_masks``, polygons with an odd
    number of coordinates or fewer than 3 points, and RLEs whose size differs from the image's.

    Annotations without ``area`` get one (:func:`fill_area`: the mask area with ``check_masks``, else the
    box's ``w * h``), so small/medium/large are defined; pycocotools itself fails on such ground truth.

    Args:
        dataset: the parsed json (``images``, ``annotations``, ``categories``).
        json_path: its path, named in messages.
        image_dir: directory of the ``file_name``s; ``None`` skips the file checks.
        drop_invalid: drop offending annotations/images and log counts instead of raising.
        require_annotations: ``annotations`` and ``categories`` must be present (not for prediction).
        check_masks: check ``segmentation`` (when the masks are used: mask heads, segm evaluation).
        check_geometry: check box areas and image borders (off for scoring, where pycocotools accepts them).
        allow_outside_root: accept ``file_name``s outside ``image_dir``.
        drop_hint: end per-annotation messages with the ``drop_invalid`` hint (off where there is no such
            option, e.g. ``cbsa-dense score coco``).

    Returns:
        The (possibly filtered) dataset and a counter of dropped items by reason.

    Raises:
        COCOFormatError: naming ``json_path``, the entry (image or annotation id) and the value.
    """
    where = str(json_path)
    if not isinstance(dataset, dict):
        raise COCOFormatError(f"{where}: the top level is a JSON {json_type(dataset)}, not an object with "
                              "'images', 'annotations' and 'categories'; give a COCO instances json")
    for key in ("images", "annotations", "categories"):
        if key not in dataset and key != "images" and not require_annotations:
            continue
        if key not in dataset:
            raise COCOFormatError(f"{where}: missing key {key!r} (keys: {sorted(dataset)[:10]}); give a COCO "
                                  "instances json with 'images', 'annotations' and 'categories' lists")
        if not isinstance(dataset[key], list):
            raise COCOFormatError(f"{where}: {key!r} is a JSON {json_type(dataset[key])}, expected an array of objects")
    raw_images = dataset["images"]
    raw_anns = dataset.get("annotations", [])
    raw_cats = dataset.get("categories", [])
    if raw_anns and "categories" not in dataset:
        raise COCOFormatError(f"{where}: has 'annotations' but no 'categories' list; add the categories")
    if require_annotations and not raw_cats:
        raise COCOFormatError(f"{where}: 'categories' is empty; list the object categories")

    def entry(kind: str, index: int, item: Any) -> Any:
        if not isinstance(item, dict):
            raise COCOFormatError(f"{where}: {kind} #{index} is a JSON {json_type(item)} ({_short(item, 40)}), "
                                  "expected an object")
        if not _is_id(item.get("id")):
            raise COCOFormatError(f"{where}: {kind} #{index} has id {_short(item.get('id'), 40)}"
                                  f"{' (missing)' if 'id' not in item else ''}, expected an integer id")
        return item["id"]

    first: dict[int, int] = {}
    for index, cat in enumerate(raw_cats):
        cid = entry("category", index, cat)
        if cid in first:
            raise COCOFormatError(f"{where}: category id {cid} is declared twice (categories #{first[cid]} and "
                                  f"#{index}); give each category its own id")
        first[cid] = index
    categories = set(first)

    dropped: Counter = Counter()

    def fail(reason: str, message: str) -> None:
        if not drop_invalid:
            raise COCOFormatError(f"{where}: {message}; {_DROP_HINT if drop_hint else _FIX_HINT}")
        dropped[reason] += 1

    root = Path(image_dir) if image_dir is not None else None
    seen: dict[int, int] = {}
    images: dict[int, dict] = {}
    for index, image in enumerate(raw_images):
        image_id = entry("image", index, image)
        if image_id in seen:
            names = [raw_images[seen[image_id]].get("file_name"), image.get("file_name")]
            files = f", files {names[0]!r} and {names[1]!r}" if any(names) else ""
            raise COCOFormatError(f"{where}: image id {image_id} is declared twice (images #{seen[image_id]} and "
                                  f"#{index}{files}); give each image its own id")
        seen[image_id] = index
        for key in ("height", "width"):
            if key in image and not (_is_id(image[key]) and image[key] > 0):
                raise COCOFormatError(f"{where}: image id {image_id} has {key} {_short(image[key], 40)}, expected a "
                                      "positive integer")
        if root is None:
            images[image_id] = image
            continue
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            raise COCOFormatError(f"{where}: image id {image_id} has file_name {_short(name, 40)}"
                                  f"{' (missing)' if 'file_name' not in image else ''}, expected a path relative "
                                  f"to {root}")
        if not allow_outside_root and (Path(name).is_absolute() or os.path.normpath(name).split(os.sep)[0] == ".."):
            raise COCOFormatError(f"{where}: image id {image_id} has file_name {name!r}, which is outside the image "
                                  f"folder {root}; use a path inside it, or set allow_outside_root: true in the data "
                                  "config if that is intended")
        if not (root / name).is_file():
            fail("missing image file", f"image id {image_id}: file {root / name} does not exist")
            continue
        images[image_id] = image

    annotations = []
    ann_first: dict[int, int] = {}
    for index, ann in enumerate(raw_anns):
        ann_id = entry("annotation", index, ann)
        if ann_id in ann_first:
            raise COCOFormatError(f"{where}: annotation id {ann_id} is used twice (annotations #{ann_first[ann_id]} "
                                  f"and #{index}); give each annotation its own id")
        ann_first[ann_id] = index
        image_id = ann.get("image_id")
        if not _is_id(image_id) or image_id not in seen:
            fail("unknown image_id", f"annotation id {ann_id} refers to image_id {image_id!r}, which is not in "
                 "'images'")
            continue
        image = images.get(image_id)
        if image is None:  # its image file is missing and was dropped
            dropped["annotation of a dropped image"] += 1
            continue
        label = image.get("file_name", f"id {image_id}")
        if not _is_id(ann.get("category_id")) or ann["category_id"] not in categories:
            fail("unknown category_id", f"annotation id {ann_id} has category_id {ann.get('category_id')!r}, "
                 f"which is not in 'categories' {sorted(categories)[:20]}")
            continue
        box = ann.get("bbox")
        problem = bbox_problem(box)
        if problem:
            fail("malformed bbox", f"annotation id {ann_id} has bbox {_short(box)}{' (missing)' if 'bbox' not in ann else ''}: "
                 f"{problem}")
            continue
        if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
            fail("malformed area", f"annotation id {ann_id} has area {_short(ann['area'], 40)}, expected a "
                 "non-negative number")
            continue
        if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd"), float):
            fail("malformed iscrowd", f"annotation id {ann_id} has iscrowd {_short(ann.get('iscrowd'), 40)}, "
                 "expected 0 or 1")
            continue
        height, width = image.get("height"), image.get("width")
        if check_masks and "segmentation" in ann:
            problem = segmentation_problem(ann["segmentation"], height, width)
            if problem:
                fail(problem[0], f"annotation id {ann_id} (image {label}): {problem[1]}")
                continue
        x, y, w, h = (float(v) for v in box)
        if check_geometry:
            if w <= 0 or h <= 0:
                fail("zero-area bbox", f"annotation id {ann_id} has a zero-area bbox {box} (image {label})")
                continue
            tol = BORDER_TOLERANCE
            if width is not None and height is not None and (
                    x < -tol or y < -tol or x + w > width + tol or y + h > height + tol):
                fail("bbox outside image", f"annotation id {ann_id} has bbox {box} outside its image {label} of size "
                     f"{width}x{height}")
                continue
        annotations.append(fill_area(ann, height, width, from_mask=check_masks))
    if dropped:
        log.warning("%s: dropped %s", json_path, ", ".join(f"{n} x {reason}" for reason, n in dropped.items()))
    return {**dataset, "images": list(images.values()), "annotations": annotations,
            "categories": list(raw_cats)}, dropped


def annotation_mask(segm, height: int, width: int) -> np.ndarray:
    """Polygons or (un)compressed RLE -> (height, width) uint8 mask."""
    if isinstance(segm, list):
        if not segm:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm.get("counts"), list):
        rle = mask_utils.frPyObjects(segm, height, width)
    else:
        rle = segm
    return mask_utils.decode(rle)
