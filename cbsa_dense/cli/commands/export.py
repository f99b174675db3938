"""``cbsa-dense export``: a checkpoint to ONNX or TorchScript, with sidecar JSON and parity check."""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbsa-dense export", description=__doc__)
    p.add_argument("--ckpt_path", required=True, help="checkpoint written by cbsa-dense fit")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"],
                   help="onnx needs the export extra: pip install 'cbsa_dense[export]'")
    p.add_argument("--output", required=True, help="model file to write (sidecar: <output>.json)")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="input size of the exported graph (default: the training data's, else 512 512)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max abs difference allowed by the parity check")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from pathlib import Path

    from cbsa_dense.cli.checks import check_writable
    from cbsa_dense.errors import ConfigError, OutputError
    from cbsa_dense.export import export_checkpoint
    from cbsa_dense.export.exporter import ParityError

    if not args.tolerance >= 0:
        raise ConfigError(f"--tolerance {args.tolerance}: give the largest allowed difference, a number >= 0")
    output = Path(args.output)
    if output.is_dir():
        raise OutputError(f"--output {output} is a directory: give the model file to write, e.g. {output / 'model'}"
                          f"{'.onnx' if args.format == 'onnx' else '.pt'}")
    check_writable(output.parent, "--output's folder")
    try:
        result = export_checkpoint(args.ckpt_path, args.output, args.format,
                                   tuple(args.image_size) if args.image_size else None, args.tolerance)
    except ParityError as err:                         # the parity check failed: a result, not a user error
        print(f"cbsa-dense export: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"model": str(result.model_path), "sidecar": str(result.sidecar_path),
                      "max_abs_diff": result.max_abs_diff}))
    return 0
