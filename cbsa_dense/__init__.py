"""cbsa_dense: Contract-and-Broadcast Self-Attention (CBSA) for dense vision.

Layout: ``layers`` (torch building blocks), ``models`` (plain ``nn.Module`` encoders, necks, heads),
``tasks`` (LightningModules), ``data`` (datasets and datamodules), ``metrics`` (torchmetrics Metrics),
``commands`` (the non-training subcommands of ``cbsa-dense``), ``cli`` (the entry point).

Importing the package imports nothing heavy: :func:`load` and the checkpoint loaders import what they use.
"""

from __future__ import annotations

from cbsa_dense.errors import CheckpointError, CheckpointNotFoundError

__all__ = ["load", "CheckpointError", "CheckpointNotFoundError", "__version__"]

__version__ = "0.1.0"


def load(checkpoint, device="cpu", **settings):
    """A predictor for a checkpoint written by ``cbsa-dense fit``: :func:`cbsa_dense.predictor.load` (see there).

    A path that does not exist, cannot be read or is empty is reported (:class:`~cbsa_dense.errors.CheckpointError`,
    also a ``FileNotFoundError`` when it does not exist) before torch, Lightning and the models are imported.
    """
    _check_file(checkpoint)
    from cbsa_dense.predictor import load as load_predictor

    return load_predictor(checkpoint, device, **settings)


def _check_file(checkpoint) -> None:
    """The first checks of :func:`cbsa_dense.models.checkpoint.read_checkpoint` (same messages), with the standard
    library only; it checks the rest (folders included)."""
    import os
    from pathlib import Path

    if not isinstance(checkpoint, (str, os.PathLike)):
        return                                             # the predictor tells what it takes
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint file {path} does not exist: check the path")
    if path.is_dir():
        return
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"cannot read checkpoint file {path}: permission denied; check its permissions")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file {path} is empty (0 bytes): it was not written completely; "
                              f"use another copy")


def __getattr__(name: str):
    if name in ("load_official_checkpoint", "load_cbt_checkpoint"):
        from cbsa_dense.models import official

        return getattr(official, name)
    raise AttributeError(f"module 'cbsa_dense' has no attribute {name!r}")
