"""The ``cbsa-dense`` command line.

Training subcommands (``fit``, ``validate``, ``test``, ``predict``) are Lightning's, through
:class:`CBSADenseCLI` (a ``LightningCLI`` in subclass mode: ``--model`` and ``--data`` take any
``LightningModule`` / ``LightningDataModule`` by ``class_path``). The other subcommands are plain
commands in :mod:`cbsa_dense.commands`, each a module with a ``main(argv) -> int`` function, imported
only when used so that ``cbsa-dense score ...`` starts fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

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


def _print_extra_help() -> None:
    lines = ["", "Other subcommands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in EXTRA_COMMANDS.items()]
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cbsa-dense`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    if argv and argv[0] in ("-h", "--help"):
        try:
            CBSADenseCLI(args=argv)
        except SystemExit:
            _print_extra_help()
            raise
    CBSADenseCLI(args=argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
