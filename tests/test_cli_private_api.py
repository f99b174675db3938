"""Private names of other libraries: all listed in one place (``cbsa_dense.cli.private_api``), and all still
there in the installed versions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cbsa_dense.cli import private_api

PACKAGE = Path(__file__).resolve().parents[1] / "cbsa_dense"
LIBRARIES = ("lightning", "jsonargparse", "torch", "torchvision", "torchmetrics", "timm")


def _still_there(name: str) -> bool:
    import jsonargparse._typehints
    import lightning.pytorch.core.mixins.hparams_mixin as hparams_mixin
    import torch
    from lightning.pytorch import LightningModule
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torchvision.models.detection.retinanet import RetinaNetRegressionHead

    checks = {
        "lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters":
            lambda: hasattr(hparams_mixin._given_hyperparameters, "get"),
        "lightning.pytorch.LightningModule()._trainer": lambda: LightningModule()._trainer is None,
        "lightning.pytorch.callbacks.ModelCheckpoint()._last_global_step_saved":
            lambda: ModelCheckpoint()._last_global_step_saved == 0,
        "jsonargparse._typehints.adapt_class_type": lambda: callable(jsonargparse._typehints.adapt_class_type),
        "jsonargparse._typehints.NestedArg": lambda: jsonargparse._typehints.NestedArg._fields == ("key", "val"),
        "torch.ops.aten._softmax_backward_data": lambda: callable(torch.ops.aten._softmax_backward_data),
        "torchvision.models.detection.retinanet.RetinaNetRegressionHead()._loss_type":
            lambda: isinstance(RetinaNetRegressionHead(8, 1)._loss_type, str),
    }
    return checks[name]()


@pytest.mark.parametrize("name", [n for _, n, _ in private_api.PRIVATE_NAMES])
def test_every_listed_private_name_is_still_there(name):
    assert _still_there(name), f"{name} is gone from the installed release: see cbsa_dense/cli/private_api.py"


@pytest.mark.parametrize(("library", "name", "where"), private_api.PRIVATE_NAMES)
def test_every_listed_name_is_explained_in_the_module_doc(library, name, where):
    doc = private_api.__doc__
    private_part = next(part for part in reversed(name.replace("()", "").split(".")) if part.startswith("_"))
    assert private_part in doc and where.rpartition(".")[2] in doc, name


def test_no_private_import_of_another_library_is_left_unlisted():
    """Every ``from lib._x import y`` / ``from lib import _y`` in the package names a listed private name."""
    listed = {n for _, n, _ in private_api.PRIVATE_NAMES}
    unlisted = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                continue
            if node.module.split(".")[0] not in LIBRARIES:
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if any(part.startswith("_") for part in full.split(".")) and \
                        not any(n == full or n.startswith(f"{full}.") for n in listed):
                    unlisted.append(f"{path.relative_to(PACKAGE)}: {full}")
    assert not unlisted, f"private names not listed in cbsa_dense/cli/private_api.py: {unlisted}"
