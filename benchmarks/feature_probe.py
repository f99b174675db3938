#!/usr/bin/env python
"""What the encoder's features hold, apart from fine-tuning, and what the training crops show of each class.

* For each arm (pretrained ``softmax``; ``cbsa`` = finetune_cpu.yaml's encoder after its attention transfer on
  each fold's training crops; encoder, transfer, crops and evaluation size are read from that config), encoder frozen: a ridge classifier on the tokens of 4 street frames seen whole at
  the config's evaluation size (448x252), scored on the tokens of the 5th, leave one frame out over the folds
  that ``cbsa-dense benchmark real seg`` made in ``--cache``/folds (token label: the majority class of each
  14x14 patch). Deterministic: what a linear head can read from the features, without fine-tuning's noise.
* The share of each class among the pixels of the frames, and of ``--batches`` batches of the training loader's
  crops (its own augmentation) for each ``--class-balanced-crops``.

    python benchmarks/feature_probe.py --cache data_cache/real [--arms softmax cbsa] [--threads 2] [--out p.json]

Per-class IoU x 100 over the tokens of the 5 held-out frames pooled. About 2 minutes with --threads 2 (the CBSA arm
transfers the attention once per fold). Numbers: docs/real_photos.md.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path


def _recipe() -> dict:
    """The pieces of finetune_cpu.yaml the probe repeats: encoder, attention transfer, training data, evaluation size."""
    from cbsa_dense.cli.config_files import load_config

    config = load_config("finetune_cpu.yaml")
    (transfer,) = [c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"] == "AttentionTransfer"]
    return {"encoder": config["model"]["init_args"]["encoder"]["init_args"], "transfer": transfer,
            "data": config["data"]["init_args"], "scale": config["model"]["init_args"]["evaluation"]["scale"]}


def _encoder(arm: str, weights: Path, fold: Path, seed: int, recipe: dict):
    from lightning.pytorch import seed_everything

    from cbsa_dense.layers import CBSAAttention
    from cbsa_dense.linearize.run import LinearizeSettings, linearize_encoder
    from cbsa_dense.models.encoders import ViTEncoder

    seed_everything(seed, verbose=False)
    enc = recipe["encoder"]
    attn = partial(CBSAAttention, **enc["attn_layer"]["init_args"]) if arm == "cbsa" else None
    encoder = ViTEncoder(arch=enc["arch"], img_size=enc["img_size"], attn_layer=attn, pretrained=str(weights))
    if arm == "cbsa":
        t = recipe["transfer"]
        linearize_encoder(encoder, _data(fold, 0.0, recipe).train_dataloader(), LinearizeSettings(
            steps=t["steps"], eval_every=t["eval_every"], train=tuple(t["train"]), double_size_check=False),
            progress=False)
    return encoder.eval().requires_grad_(False)


def _data(fold: Path, balanced: float, recipe: dict):
    from cbsa_dense.data.seg_folder import SegFolderDataModule
    from cbsa_dense.tasks.eval_protocol import SegEvaluation

    d = recipe["data"]
    data = SegFolderDataModule(root=str(fold), batch_size=d["batch_size"], val_batch_size=1, num_workers=0,
                               crop_size=d["crop_size"], scale=d["scale"], ratio_range=d["ratio_range"],
                               class_balanced_crops=balanced, evaluation=SegEvaluation(scale=recipe["scale"]))
    data.setup("fit")
    return data


def _class_counts(mask):
    """Labelled pixels of each of the 3 classes in ``mask`` (ignore index 255 dropped)."""
    import torch

    return torch.bincount(mask[mask != 255].flatten(), minlength=3)[:3].float()


def _ious(confusion) -> list[float]:
    from cbsa_dense.metrics.miou import scores_from_confusion

    return [round(100 * float(v), 1) for v in scores_from_confusion(confusion)["iou"]]


def _ridge(encoders: dict[Path, object], folds: list[Path], frames: list[dict]) -> list[float]:
    """Token-level ridge probe over whole frames, leave one frame out (``frames[k]``: fold k's validation
    batch); fold k's frames are read by fold k's encoder (for CBSA: the one whose attention transfer saw only
    fold k's training frames)."""
    import torch
    import torch.nn.functional as F

    from cbsa_dense.metrics.miou import confusion_matrix

    confusion = 0
    for k, fold in enumerate(folds):
        feats, labels = [], []
        with torch.no_grad():
            for batch in frames:
                f = encoders[fold](batch["image"])[0][0]                              # (C, h, w)
                onehot = F.one_hot(batch["mask"][0].clamp(max=2), 3).permute(2, 0, 1).float()[None]
                feats.append(f.flatten(1).T.double())
                labels.append(F.adaptive_avg_pool2d(onehot, f.shape[-2:])[0].flatten(1).T.double())
        x = torch.cat([f for i, f in enumerate(feats) if i != k])
        y = torch.cat([t for i, t in enumerate(labels) if i != k])
        mean, std = x.mean(0), x.std(0) + 1e-6

        def design(z, mean=mean, std=std):
            return torch.cat([(z - mean) / std, torch.ones(len(z), 1, dtype=z.dtype)], 1)

        a = design(x)
        w = torch.linalg.solve(a.T @ a + 10.0 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ y)
        confusion = confusion + confusion_matrix((design(feats[k]) @ w).argmax(1), labels[k].argmax(1), 3, 255)
    return _ious(confusion)


def _crop_shares(fold: Path, balanced: float, batches: int, recipe: dict) -> list[float]:
    """Share of each class among the labelled pixels of ``batches`` training batches (the loader's own crops)."""
    counts = 0
    for i, batch in enumerate(_data(fold, balanced, recipe).train_dataloader()):
        counts = counts + _class_counts(batch["mask"])
        if i + 1 == batches:
            break
    return [round(100 * float(c), 2) for c in counts / counts.sum()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("data_cache/real"))
    parser.add_argument("--arms", nargs="+", default=["softmax", "cbsa"], choices=["softmax", "cbsa"])
    parser.add_argument("--class-balanced-crops", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--batches", type=int, default=200, help="training batches counted per fold (a fit's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as json")
    args = parser.parse_args()
    import torch
    from lightning.pytorch import seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    folds = sorted((args.cache / "folds").glob("street_*"))
    weights = args.cache / "dinov2_vits14.safetensors"
    if not folds or not weights.is_file():
        parser.error(f"{args.cache} has no folds/street_* or dinov2_vits14.safetensors: run `cbsa-dense benchmark "
                     f"real seg --cache {args.cache}` first")
    recipe = _recipe()
    frames = [next(iter(_data(fold, 0.0, recipe).val_dataloader())) for fold in folds]    # fold k holds frame k out
    counts = sum(_class_counts(frame["mask"]) for frame in frames)
    totals = [round(100 * float(c), 2) for c in counts / counts.sum()]
    results = {"frame pixels": totals}
    print(f"pixels of the 5 frames: background / car / truck {totals} %", flush=True)
    for arm in args.arms:
        encoders = {fold: _encoder(arm, weights, fold, args.seed, recipe) for fold in folds}
        ious = _ridge(encoders, folds, frames)
        results[arm] = ious
        print(f"{arm:8s} ridge probe, IoU background / car / truck: {ious}  mIoU {sum(ious) / len(ious):.1f}",
              flush=True)
    for balanced in args.class_balanced_crops:
        seed_everything(args.seed, verbose=False)
        shares = [_crop_shares(fold, balanced, args.batches, recipe) for fold in folds]
        mean = [round(sum(c) / len(c), 2) for c in zip(*shares)]
        results[f"crop pixels, class_balanced_crops {balanced}"] = mean
        print(f"pixels of {args.batches} training batches, class_balanced_crops {balanced}: background / car / "
              f"truck {mean} %", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
