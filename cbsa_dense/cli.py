"""The ``cbsa-dense`` command line.

Training subcommands (``fit``, ``validate``, ``test``, ``predict``) are Lightning's, through
:class:`CBSADenseCLI` (a ``LightningCLI`` in subclass mode: ``--model`` and ``--data`` take any
``LightningModule`` / ``LightningDataModule`` by ``class_path``). The other subcommands are plain
commands in :mod:`cbsa_dense.commands`, each a module with a ``main(argv) -> int`` function, imported
only when used so that ``cbsa-dense score ...`` starts fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

#: Extra subcommands: name -> (module with ``main(argv)``, one-line help).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("cbsa_dense.commands.score", "score predictions against ground truth (seg | coco)"),
    "info": ("cbsa_dense.commands.info", "parameter counts and GFLOPs of a config's model"),
    "benchmark": ("cbsa_dense.commands.benchmark", "speed/memory benchmarks: attention | encoder | train"),
    "export": ("cbsa_dense.commands.export", "export a checkpoint to ONNX or TorchScript"),
    "explain": ("cbsa_dense.commands.explain", "visualize CBSA extraction maps of a checkpoint"),
}


class CBSADenseCLI(LightningCLI):
    """LightningCLI with the project's defaults (subclass mode, config saving with overwrite)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(LightningModule, LightningDataModule, *args, subclass_mode_model=True,
                         subclass_mode_data=True, **kwargs)


def _model_from_checkpoint(argv: list[str]) -> list[str]:
    """Evaluate a checkpoint without repeating the training config.

    For ``validate``/``test``/``predict`` with ``--ckpt_path`` and no ``--model`` (nor a ``--config``
    that sets one), add ``--model`` with the task config stored in the checkpoint (LightningCLI saves
    it as hyper-parameters). Only the data config is still needed.
    """
    if not argv or argv[0] not in ("validate", "test", "predict"):
        return argv
    if any(a == "--model" or a.startswith(("--model=", "--model.")) for a in argv):
        return argv
    values = dict(zip(argv, argv[1:]))
    values.update(a.split("=", 1) for a in argv if a.startswith(("--ckpt_path=", "--config=", "-c=")))
    ckpt = values.get("--ckpt_path")
    for flag in ("--config", "-c"):
        config = values.get(flag)
        if config and Path(config).is_file() and "model" in (yaml.safe_load(Path(config).read_text()) or {}):
            return argv
    if not ckpt or not Path(ckpt).is_file():
        return argv
    import torch

    hparams = torch.load(ckpt, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    class_path = hparams.get("_class_path")
    if not class_path:
        return argv
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
    return [argv[0], "--model", json.dumps({"class_path": class_path, "init_args": init_args}), *argv[1:]]


def _print_extra_help() -> None:
    lines = ["", "Other subcommands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()]
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cbsa-dense`` console script."""
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    argv = _model_from_checkpoint(argv)
    if from_console:                      # LightningCLI warns when both sys.argv and args are given
        sys.argv[1:] = argv
    args = None if from_console else argv
    if argv and argv[0] in ("-h", "--help"):
        try:
            CBSADenseCLI(args=args)
        except SystemExit:
            _print_extra_help()
            raise
    CBSADenseCLI(args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
