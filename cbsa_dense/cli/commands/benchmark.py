"""``cbsa-dense benchmark {attention,encoder,train,targets,real}``: speed and memory, side by side in one process;
``real``: accuracy of named arms on real photos, over seeds and folds (:mod:`cbsa_dense.benchmark.real`).

Examples::

    cbsa-dense benchmark attention --tokens 1024 4096 16384 --dim 384 --heads 6 --json
    cbsa-dense benchmark encoder --image-size 512 1024 2048 --json --out-dir bench_out
    cbsa-dense benchmark train --config demo_seg.yaml --steps 20
    cbsa-dense benchmark targets --attention bench_out/attention.json --encoder bench_out/encoder.json
    cbsa-dense benchmark real seg --seeds 0 1 2 --jobs 2      # real photos: arms x folds x seeds, report.md

With ``--json`` the records are printed as one JSON list (``train``: one JSON object); otherwise as a
markdown table. ``--out-dir`` also writes ``<kind>.json``, ``<kind>.md`` and ``<kind>.png`` there.
``targets`` checks the issue's speed/memory ratios on such JSON files (exit code 1 if one is missed).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (CUDA when available)")
    parser.add_argument("--dtype", nargs="+", default=None, choices=sorted(DTYPES),
                        help="dtypes to run (bf16 via autocast); default: float32, plus bf16 where the "
                             "device supports it natively")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median and min reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument("--out-dir", default=None, help="also write <kind>.json/.md/.png to this directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbsa-dense benchmark", description="Speed and memory benchmarks, implementations side by side in one process.")
    sub = parser.add_subparsers(dest="kind", required=True)
    attn = sub.add_parser("attention", help="one attention layer: CBSA vs softmax (SDPA) vs linear")
    attn.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    attn.add_argument("--dim", type=int, default=384)
    attn.add_argument("--heads", type=int, default=6)
    attn.add_argument("--batch", type=int, default=1)
    attn.add_argument("--rep-grid", type=int, nargs=2, default=[8, 8], metavar=("GH", "GW"))
    attn.add_argument("--impls", nargs="+", default=["cbsa", "softmax", "linear", "cbsa_reference"],
                      choices=["cbsa", "softmax", "linear", "cbsa_reference"])
    _common(attn)
    enc = sub.add_parser("encoder", help="ViT-S-width encoder (12 blocks): CBSA vs softmax attention")
    enc.add_argument("--image-size", type=int, nargs="+", default=[512, 1024, 2048])
    enc.add_argument("--attentions", nargs="+", default=["cbsa", "softmax"], choices=["cbsa", "softmax", "linear"])
    enc.add_argument("--batch", type=int, default=1)
    enc.add_argument("--dim", type=int, default=384)
    enc.add_argument("--depth", type=int, default=12)
    enc.add_argument("--heads", type=int, default=6)
    enc.add_argument("--patch-size", type=int, default=16)
    enc.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count")
    _common(enc)
    enc.set_defaults(repeats=3)
    train = sub.add_parser("train", help="training steps/s and images/s of a config, and its loader alone",
                           description="Unknown arguments are passed to the config parser as overrides, "
                                       "e.g. --data.init_args.batch_size 2.")
    train.add_argument("--config", required=True,
                       help="a `cbsa-dense fit` config: a YAML file or a shipped name (`cbsa-dense configs`)")
    train.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    train.add_argument("--warmup-steps", type=int, default=3, help="untimed steps (and loader batches) first")
    train.add_argument("--data-batches", type=int, default=None, help="loader-only batches (default: --steps)")
    train.add_argument("--threads", type=int, default=None)
    train.add_argument("--json", action="store_true", help="print the record as JSON")
    real = sub.add_parser("real", help="fine-tune named arms on real photos over seeds (and folds): mean, spread, "
                                       "per class", description=_real_doc(),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    real.add_argument("task", choices=["seg", "det"], help="seg: street frames, leave one frame out; det: trees, "
                                                             "same site")
    real.add_argument("--arms", nargs="+", default=["random", "softmax", "cbsa"],
                      help="random, softmax, cbsa, or NAME=CONFIG.yaml (the base config with that file on top)")
    real.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    real.add_argument("--folds", type=int, default=None, help="seg: the first N leave-one-frame-out folds (all)")
    real.add_argument("--jobs", type=int, default=2, help="runs at once, each in its own process")
    real.add_argument("--threads", type=int, default=1, help="torch threads per run")
    real.add_argument("--steps", type=int, default=None, help="training steps (the base config's)")
    real.add_argument("--val-every", type=int, default=None, help="validation interval in steps (the config's)")
    real.add_argument("--base-config", default=None,
                      help="the config every arm starts from (seg: finetune_cpu.yaml, det: finetune_det_cpu.yaml)")
    real.add_argument("--out", type=Path, default=Path("benchmarks/results/real"), help="runs and report.md")
    real.add_argument("--cache", type=Path, default=Path("data_cache/real"), help="photos, folds, weights")
    real.add_argument("--tools", type=Path, default=None, help="the project's test-material tools (../shared/tools)")
    real.add_argument("--data-root", type=Path, default=None, help="your own data instead of the tools' photos")
    real.add_argument("--weights", type=Path, default=None, help="your own pretrained ViT weights (timm names)")
    targets = sub.add_parser("targets", help="check issue 6's speed targets on JSON files written by --out-dir")
    targets.add_argument("--attention", default=None, help="attention.json (from --out-dir)")
    targets.add_argument("--encoder", default=None, help="encoder.json (from --out-dir)")
    targets.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    targets.add_argument("--json", action="store_true", help="print the rows as JSON")
    return parser


def _real_doc() -> str:
    from cbsa_dense.benchmark import real

    return (real.__doc__ or "").split("\n\n", 1)[1] + "\nUnknown arguments go to every fit (e.g. --trainer.max_steps 300)."


def _records(path: str | None) -> list[dict]:
    if path is None:
        return []
    data = json.loads(Path(path).read_text())
    return data["records"] if isinstance(data, dict) else data


def main(argv: list[str]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.kind not in ("train", "real"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.kind == "real":
        from cbsa_dense.benchmark.real import benchmark_real

        benchmark_real(args.task, args.arms, args.seeds, args.out, args.cache, args.tools, args.data_root,
                       args.weights, args.folds, args.jobs, args.threads, args.steps, args.val_every,
                       args.base_config, extra, command="cbsa-dense benchmark " + " ".join(argv))
        return 0
    if args.kind == "targets":
        from cbsa_dense.benchmark.targets import check_targets

        rows = check_targets(_records(args.attention), _records(args.encoder), args.dtype)
        print(json.dumps(rows) if args.json else _table(rows))
        return 0 if all(r["ok"] for r in rows) else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kind == "train":
        record = bench_train_config(args.config, args.steps, args.warmup_steps, args.data_batches, overrides=extra)
        print(json.dumps(record) if args.json else _table([record]))
        return 0

    from cbsa_dense.benchmark.timing import machine_info, resolve_device, supported_dtypes

    device = resolve_device(args.device)
    dtypes = [DTYPES[d] for d in args.dtype] if args.dtype else supported_dtypes(device)
    common = {"dtypes": dtypes, "device": device, "warmup": args.warmup, "repeats": args.repeats,
              "memory": not args.no_memory}
    if args.kind == "attention":
        from cbsa_dense.benchmark.attention import bench_attention

        records = bench_attention(args.tokens, args.dim, args.heads, args.batch, args.impls,
                                  rep_grid=tuple(args.rep_grid), **common)
        layout = {"x": "tokens", "series": "impl", "baseline": "softmax"}
    else:
        from cbsa_dense.benchmark.encoder import bench_encoder

        records = bench_encoder(args.image_size, args.attentions, args.batch, flops=not args.no_flops,
                                embed_dim=args.dim, depth=args.depth, num_heads=args.heads,
                                patch_size=args.patch_size, **common)
        layout = {"x": "tokens", "series": "attention", "baseline": "softmax"}
    if args.out_dir:
        from cbsa_dense.benchmark.report import write_report

        write_report(records, args.out_dir, args.kind, machine=machine_info(device), **layout)
    print(json.dumps(records) if args.json else _table(records))
    return 0


def parse_train_config(config: str, overrides: Sequence[str] = ()):
    """The model, the datamodule and the trainer section of a ``cbsa-dense fit`` config, built exactly as
    ``cbsa-dense fit --config CFG`` builds them (nothing is run). ``config``: a file or a shipped config name,
    composed from its ``_base_`` files; ``overrides``: further command-line arguments (``--data.init_args.x 2``)."""
    from cbsa_dense.cli.config_blame import config_error_context
    from cbsa_dense.cli.config_files import compose_config_args
    from cbsa_dense.cli.lightning_cli import CBSADenseCLI
    from cbsa_dense.cli.stored_run import prepare_args

    args = compose_config_args(["--config", str(config), *overrides])     # shipped names, _base_ files
    with config_error_context(args):            # a parse error names the config file that set the key
        parsed, stored = prepare_args(args)
        cli = CBSADenseCLI(run=False, args=parsed, stored_run=stored)     # composed already: not again
    return cli.model, cli.datamodule, cli.config.get("trainer", {}) or {}


def bench_train_config(config: str, steps: int = 20, warmup_steps: int = 3, data_batches: int | None = None,
                       overrides: Sequence[str] = ()) -> dict:
    """``benchmark train``: :func:`cbsa_dense.benchmark.train.bench_train` of what ``config`` builds."""
    from cbsa_dense.benchmark.train import bench_train, check_steps, step_settings

    check_steps(steps, warmup_steps)                     # before the (slow) parse, as a usage error
    model, datamodule, trainer_config = parse_train_config(config, overrides)
    return bench_train(model, datamodule, steps, warmup_steps, data_batches,
                       trainer_settings=step_settings(trainer_config), config=str(config))


def _table(records: list[dict]) -> str:
    from cbsa_dense.benchmark.report import markdown_table

    return markdown_table(records)
