"""``cbsa-dense linearize``: turn a pretrained softmax ViT's attention into CBSA that reproduces it.

Builds the model and data of a training config (any ``fit`` option works: ``--config``, ``--data...``,
``--model...``), matches each CBSA block of the encoder to the softmax attention of the weights it was
loaded with, on the training images (labels unused), and writes the encoder's weights (timm names plus
the CBSA step sizes and local terms, and a marker that makes the config's ``AttentionTransfer`` callback
skip itself) to a file that ``encoder.init_args.pretrained`` accepts::

    cbsa-dense linearize --config finetune_cpu.yaml --data.init_args.root my_data \\
        --model.init_args.encoder.init_args.pretrained dinov2_vits14.safetensors --out enc_cbsa.safetensors
    cbsa-dense fit --config finetune_cpu.yaml --data.init_args.root my_data \\
        --model.init_args.encoder.init_args.pretrained enc_cbsa.safetensors

The transfer settings are those of the config's ``AttentionTransfer`` callback when it lists one, else
the defaults; the flags below override them. ``--diagnose-only`` prints the per-block errors against the
softmax teacher (at the training crop and at twice its size) and changes nothing: a check of how far a
CBSA encoder is from the softmax model it came from.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from cbsa_dense.errors import ConfigError, OutputError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbsa-dense linearize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--out", default=None, help="encoder weights file to write (.safetensors)")
    p.add_argument("--report", default=None, help="also write the before/after report here (JSON)")
    p.add_argument("--diagnose-only", action="store_true", help="only print the per-block errors; write nothing")
    p.add_argument("--steps", type=int, default=None, help="transfer steps (0 = calibration only)")
    p.add_argument("--train", nargs="+", default=None, choices=("step_sizes", "local", "qk"),
                   help="what the transfer trains")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="closed-form step sizes first")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    return p


def _settings(trainer, args: argparse.Namespace):
    from dataclasses import replace

    from cbsa_dense.callbacks.attention_transfer import AttentionTransfer
    from cbsa_dense.linearize.run import LinearizeSettings

    configured = [c for c in trainer.callbacks if isinstance(c, AttentionTransfer)]
    settings = configured[0].settings if configured else LinearizeSettings()
    changes = {k: v for k, v in (("steps", args.steps), ("calibrate", args.calibrate),
                                 ("train", tuple(args.train) if args.train else None)) if v is not None}
    settings = replace(settings, **changes)
    settings.check()
    return settings


def main(argv: list[str]) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if not args.diagnose_only and not args.out:
        raise ConfigError("linearize writes the matched encoder weights to a file: give --out FILE.safetensors (or "
                          "--diagnose-only to only print the per-block errors)")
    out = Path(args.out) if args.out else None
    if out is not None:
        from cbsa_dense.cli.checks import check_writable

        if out.suffix != ".safetensors":
            raise ConfigError(f"--out {out}: the weights are written as safetensors: give a file name ending in "
                              f".safetensors, e.g. {out.with_suffix('.safetensors')}")
        if out.exists() and not args.force:
            raise OutputError(f"--out {out} exists; pass --force to overwrite it, or give another file")
        check_writable(out.parent, "--out")
    if any(a.startswith("--ckpt_path") for a in rest):
        raise ConfigError("linearize takes a training config (--config ...), not --ckpt_path: to start from a "
                          "checkpoint's weights, give --model.init_args.weights FILE")

    from cbsa_dense.cli.lightning_cli import CBSADenseCLI
    from cbsa_dense.linearize.run import linearize_encoder

    with warnings.catch_warnings():
        # Lightning warns whenever `args` is given while sys.argv holds a command line, and prints the whole composed
        # config with it (2.5 KB). Here both are the same command: `rest` is the console's arguments minus
        # linearize's own flags (run=False, nothing else to mistake). Only that one warning is dropped, as
        # cbsa_dense.cli.lightning_cli.run does for the training subcommands.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended", category=UserWarning)
        cli = CBSADenseCLI(args=rest, run=False)
    encoder = getattr(getattr(cli.model, "model", None), "encoder", None)
    if encoder is None:
        raise ConfigError(f"linearize needs a task with an encoder, not {type(cli.model).__name__}: give a "
                          "segmentation or detection config (--config)")
    from cbsa_dense.linearize.teacher import cbsa_blocks

    cbsa_blocks(encoder)                          # a CBSA encoder that can hold softmax weights, else one line
    if getattr(cli.model, "weights", None):
        cli.model.load_weights(cli.model.weights)
    elif not getattr(encoder, "pretrained_from", None):
        raise ConfigError("the encoder has no pretrained weights, so there is no softmax model "
                          "to match: give --model.init_args.encoder.init_args.pretrained FILE (timm names)")
    settings = _settings(cli.trainer, args)
    cli.datamodule.setup("fit")
    report = linearize_encoder(encoder, cli.datamodule.train_dataloader(), settings,
                               progress=sys.stderr.isatty(), diagnose_only=args.diagnose_only)
    print(report.text())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=1))
    if out is not None:
        import torch
        from safetensors.torch import save_file

        from cbsa_dense.models.encoders.vit import LINEARIZED_KEY

        state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
        state[LINEARIZED_KEY] = torch.ones(())
        save_file(state, str(out), metadata={"format": "pt", "written_by": "cbsa-dense linearize"})
        print(f"wrote {out} ({len(state) - 1} tensors): use it as --model.init_args.encoder.init_args.pretrained "
              "(an AttentionTransfer callback in the config then skips itself)")
    return 0
