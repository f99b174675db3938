#!/usr/bin/env python
"""A detection checkpoint on one large photo: shrunk to the training input size (``shrunk``: longest side to
``image_size``, as the evaluation ``mode: resize`` does), whole at its own size (``native``), whole with the
attention in windows of the training crop (``windowed``) or in overlapping tiles (``tiled``): time, peak
memory, detections found and COCO AP against the photo's boxes.

    python benchmarks/large_photo.py --ckpt RUN/checkpoints/last.ckpt --json TREES/full.json \
        --images TREES/images --image 2019_YELL_2_528000_4978000_image_crop2 [--modes shrunk native windowed tiled]
        [--threshold 0.3] [--max-dets 1000] [--threads 2] [--out results.json]

Each mode runs in a fresh process (the peak is the growth of the process's resident set during the
prediction, as in ``cbsa-dense benchmark``; the time is one prediction after a warm-up on a 64 px image).
AP, AP50 and AR are pycocotools' at ``--max-dets`` detections (the photo's crowns can outnumber COCO's 100);
the head keeps at most ``--max-dets`` per image (per tile when tiled). The checkpoint's evaluation protocol
is changed for each mode (its ``mode``, ``tile_overlap`` where given, ``max_detection_thresholds`` [1, 10,
``--max-dets``]); ``--encoder-only`` also measures one forward pass of the encoder alone, as stored (CBSA) and
with softmax attention in every block (random weights, no AP), at the photo's size times ``--encoder-scale``
(softmax's quadratic time makes the full size slow on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path


def _one(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    import cbsa_dense
    from cbsa_dense.benchmark.timing import peak_memory_mb
    from cbsa_dense.tasks.eval_protocol import replace_fields

    torch.set_num_threads(args.threads)
    model = cbsa_dense.load(args.ckpt)
    image = np.asarray(Image.open(Path(args.images) / f"{args.image}.png").convert("RGB"))
    if args.mode == "shrunk":           # the resize protocol, also for a model trained at native size
        settings = {"mode": "native", "native_scale": model.image_size / max(image.shape[:2])}
    else:
        settings = {"mode": args.mode}
    if args.tile_overlap is not None:
        settings["tile_overlap"] = args.tile_overlap
    settings["max_detection_thresholds"] = [1, 10, args.max_dets]     # as scored below (the protocol says so)
    model.evaluation = replace_fields(model.evaluation, **settings)        # all at once, checked together
    head = model.task.model.head
    for name in ("detections_per_img",):
        if hasattr(head, name):
            setattr(head, name, args.max_dets)
    model.predict(image[:64, :64])                                  # warm-up
    result = {}

    def run():
        start = time.perf_counter()
        result["pred"] = model.predict(image)
        result["seconds"] = time.perf_counter() - start

    peak = peak_memory_mb(run)
    pred = result["pred"]
    keep = pred["scores"] >= args.threshold
    out = {"mode": args.mode, "protocol": model.describe(), "seconds": round(result["seconds"], 2),
           "peak_mb": round(peak, 1) if peak is not None else None, "detections": int(len(pred["scores"])),
           f"found_at_{args.threshold}": int(keep.sum()), "threads": args.threads}
    out.update(_coco_ap(args, pred, model.task.category_ids))
    return out


def _coco_ap(args: argparse.Namespace, pred: dict, category_ids: list[int]) -> dict:
    """AP, AP50 and AR at ``--max-dets`` (the project's COCO metric, equal to pycocotools at these limits)."""
    from pycocotools.coco import COCO

    from cbsa_dense.metrics.coco_map import evaluate_coco

    data = json.loads(Path(args.json).read_text())
    (info,) = [i for i in data["images"] if Path(i["file_name"]).stem == args.image]
    data["images"] = [info]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] == info["id"]]
    results = [{"image_id": info["id"], "category_id": int(category_ids[int(lab)]),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(s)}
               for b, s, lab in zip(pred["boxes"], pred["scores"], pred["labels"])]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
    stats = evaluate_coco(gt, results, "bbox", max_detection_thresholds=[1, 10, args.max_dets])
    return {"gt_boxes": len(data["annotations"]), "ap": round(float(stats["AP"]), 4),
            "ap50": round(float(stats["AP50"]), 4), f"ar{args.max_dets}": round(float(stats[f"AR{args.max_dets}"]), 4)}


def _encoder_only(args: argparse.Namespace) -> dict:
    """Time and peak memory of one forward pass (inference) of the checkpoint's encoder architecture with
    ``args.attention`` (cbsa: as stored; softmax: SoftmaxAttention in every block), random weights, on the
    photo's size times ``--encoder-scale``."""
    import numpy as np
    import torch
    from PIL import Image

    import cbsa_dense
    from cbsa_dense.benchmark.timing import peak_memory_mb
    from cbsa_dense.layers.softmax_attention import SoftmaxAttention

    torch.set_num_threads(args.threads)
    encoder = cbsa_dense.load(args.ckpt).task.model.encoder
    if args.attention == "softmax":
        from cbsa_dense.models.encoders.vit import ViTEncoder

        encoder = ViTEncoder(**{**encoder.stored_args(), "attn_layer": SoftmaxAttention})
    encoder.eval()
    h, w = np.asarray(Image.open(Path(args.images) / f"{args.image}.png")).shape[:2]
    h, w = round(h * args.encoder_scale), round(w * args.encoder_scale)
    x = torch.randn(1, 3, h, w)
    result = {}

    def run():
        start = time.perf_counter()
        with torch.inference_mode():
            encoder(x)
        result["seconds"] = time.perf_counter() - start

    peak = peak_memory_mb(run)
    patch = encoder.patch_embed.patch_size[0]
    return {"mode": f"encoder only, {args.attention}", "size": [h, w], "tokens": -(-h // patch) * -(-w // patch),
            "seconds": round(result["seconds"], 2), "peak_mb": round(peak, 1) if peak is not None else None,
            "threads": args.threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--json", required=True, help="COCO json holding the photo and its boxes")
    parser.add_argument("--images", required=True, help="the json's image folder")
    parser.add_argument("--image", required=True, help="file stem of the photo")
    parser.add_argument("--modes", nargs="+", default=["shrunk", "native", "windowed", "tiled"])
    parser.add_argument("--encoder-only", action="store_true",
                        help="also time the encoder alone, CBSA and softmax, at the photo's size x --encoder-scale")
    parser.add_argument("--encoder-scale", type=float, default=1.0)
    parser.add_argument("--attention", help=argparse.SUPPRESS)
    parser.add_argument("--tile-overlap", type=int, default=None)
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--max-dets", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:                                               # the child process: one measurement
        print(json.dumps(_encoder_only(args) if args.mode == "encoder" else _one(args)))
        return
    rows = []
    runs = [["--mode", m] for m in args.modes]
    if args.encoder_only:
        runs += [["--mode", "encoder", "--attention", a] for a in ("cbsa", "softmax")]
    for extra in runs:
        mode = " ".join(extra[1:])
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], *extra], capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{mode}: failed (exit {done.returncode})")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
