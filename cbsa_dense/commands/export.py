"""``cbsa-dense export``: a checkpoint to ONNX or TorchScript, with sidecar JSON and parity check."""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbsa-dense export", description=__doc__)
    p.add_argument("--ckpt_path", required=True, help="checkpoint written by cbsa-dense fit")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--output", required=True, help="model file to write (sidecar: <output>.json)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size of the exported graph (default: the training data's, else 512 512)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed by the parity check")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from cbsa_dense.export import export_checkpoint

    try:
        result = export_checkpoint(args.ckpt_path, args.output, args.format,
                                   tuple(args.image_size) if args.image_size else None, args.tolerance)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"model": str(result.model_path), "sidecar": str(result.sidecar_path),
                      "max_abs_diff": result.max_abs_diff}))
    return 0
