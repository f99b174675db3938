"""``cbsa-dense explain``: pictures of CBSA's representatives for a checkpoint, and a zero-shot score.

For each image it writes one PNG per (layer, head): the image, the model's prediction, the coloured
argmax over representatives, the affinity (A^T A) of a chosen pixel or of the CLS token, and every
representative's support map (A rows on the patch grid). With ``--zero-shot-masks`` it also scores the
argmax-over-representatives map against ground truth (each cluster takes its majority class per
image) and prints the mIoU. Prints one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from cbsa_dense.data.seg_transforms import IMAGENET_MEAN, IMAGENET_STD
from cbsa_dense.errors import DataError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbsa-dense explain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="checkpoint written by cbsa-dense fit (seg or det)")
    p.add_argument("--images", required=True, nargs="+", help="image files and/or directories")
    p.add_argument("--output", required=True, help="output directory for the PNGs")
    p.add_argument("--layers", type=int, nargs="+", default=[-1],
                   help="CBSA layer indices in forward order (negative from the end; default: last)")
    p.add_argument("--heads", type=int, nargs="+", default=[0], help="heads to draw (default: 0)")
    p.add_argument("--pixel", type=int, nargs=2, metavar=("Y", "X"), default=None,
                   help="pixel whose affinity map is drawn (default: the CLS token, else the centre patch)")
    p.add_argument("--max-images", type=int, default=None, help="explain at most this many images")
    p.add_argument("--zero-shot-masks", default=None,
                   help="directory of ground-truth label PNGs (matched by stem) for the zero-shot attention "
                        "segmentation mIoU; label convention from the checkpoint (reduce_zero_label)")
    p.add_argument("--zero-shot-layer", type=int, default=-1, help="CBSA layer used for the zero-shot score")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from cbsa_dense.cli.checks import check_writable
    from cbsa_dense.data.seg_labels import read_image
    from cbsa_dense.errors import ConfigError
    from cbsa_dense.interpret.capture import capture_extractions, cbsa_layers
    from cbsa_dense.interpret.forward import forward_any, render_output
    from cbsa_dense.interpret.inputs import list_images, to_model_input
    from cbsa_dense.interpret.render import pixel_token, save_explanation
    from cbsa_dense.tasks.loading import load_task

    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images {args.max_images}: give a positive number of images (or leave it out)")
    if args.pixel and min(args.pixel) < 0:
        raise ConfigError(f"--pixel {args.pixel[0]} {args.pixel[1]}: give a (y, x) pixel inside the images, >= 0")
    paths = list_images(args.images)[: args.max_images]
    check_writable(args.output, "--output")
    task = load_task(args.ckpt_path)
    info = dict(getattr(task, "data_info", None) or {})
    mean, std = info.get("mean", IMAGENET_MEAN), info.get("std", IMAGENET_STD)
    layer_names = [name for name, _ in cbsa_layers(task.model)]
    if not layer_names:
        raise ConfigError(f"{args.ckpt_path}: the model has no CBSA layer to explain")
    layers = sorted(set(args.layers) | ({args.zero_shot_layer} if args.zero_shot_masks else set()))
    out_dir = Path(args.output)
    written, confusion, zero_shot_layer = [], None, None
    for path in tqdm(paths, desc="explain", disable=not sys.stderr.isatty()):
        image = read_image(path)
        x = to_model_input(image, mean, std)
        with torch.no_grad(), capture_extractions(task.model, layers) as records:
            output = forward_any(task.model, x)
        prediction = render_output(task.model, output, image, info.get("class_names"), info.get("palette"))
        by_name = {record.name: record for record in records}       # records come in forward order
        by_index = {layer: by_name[layer_names[layer]] for layer in layers}
        for layer in args.layers:
            record = by_index[layer]
            heads = record.extraction.shape[1]
            for head in args.heads:
                if not 0 <= head < heads:
                    raise ConfigError(f"--heads {head} is out of range: {record.name} has {heads} heads (0..{heads - 1})")
                if args.pixel and not (args.pixel[0] < image.shape[0] and args.pixel[1] < image.shape[1]):
                    raise ConfigError(f"--pixel {args.pixel[0]} {args.pixel[1]} is outside image {path} "
                                      f"({image.shape[0]}x{image.shape[1]}, HxW): give a (y, x) inside every image")
                query = pixel_token(record, tuple(args.pixel), image.shape[:2]) if args.pixel else None
                name = f"{path.stem}_layer{layer}_head{head}.png"
                save_explanation(out_dir / name, image, record, 0, head, prediction=prediction, query_token=query,
                                 title=f"{path.name}: {record.name}, head {head}")
                written.append(str(out_dir / name))
        if args.zero_shot_masks:
            record = by_index[args.zero_shot_layer]
            zero_shot_layer = record.name
            confusion = _zero_shot_update(confusion, record, path, args.zero_shot_masks, info)
    result = {"checkpoint": args.ckpt_path, "cbsa_layers": layer_names, "written": written}
    if confusion is not None:
        from cbsa_dense.metrics.miou import scores_from_confusion

        scores = scores_from_confusion(confusion)
        result["zero_shot"] = {"layer": zero_shot_layer, "mIoU": _num(scores["miou"]),
                               "aAcc": _num(scores["aacc"]), "mAcc": _num(scores["macc"])}
    print(json.dumps(result, indent=1))
    return 0


def _num(value: torch.Tensor) -> float | None:
    value = float(value)
    return None if value != value else value


def _zero_shot_update(confusion, record, image_path: Path, mask_dir: str, info: dict):
    from cbsa_dense.data.seg_labels import read_label_map
    from cbsa_dense.interpret.zero_shot import majority_relabel, representative_argmax
    from cbsa_dense.metrics.miou import confusion_matrix

    mask_path = Path(mask_dir) / f"{image_path.stem}.png"
    if not mask_path.is_file():
        raise DataError(f"no ground-truth mask {mask_path} for image {image_path} (--zero-shot-masks)")
    mask = torch.from_numpy(read_label_map(mask_path, what="ground-truth mask"))
    ignore = int(info.get("ignore_index", 255))
    if info.get("reduce_zero_label"):
        mask = torch.where(mask == 0, torch.full_like(mask, ignore), mask - 1)
    num_classes = int(info.get("num_classes") or (int(mask[mask != ignore].max()) + 1))
    clusters = representative_argmax(record, tuple(mask.shape))[0]
    pred = majority_relabel(clusters, mask, num_clusters=record.extraction.shape[2], ignore_index=ignore)
    update = confusion_matrix(pred, mask, num_classes, ignore_index=ignore)
    return update if confusion is None else confusion + update
