"""Package namespaces whose public names are imported on first use (PEP 562).

``cbsa_dense.tasks``, ``cbsa_dense.data``, ``cbsa_dense.models`` and ``cbsa_dense.models.heads`` keep their
public names (``from cbsa_dense.data import SegFolderDataModule`` works as before), but importing one module
of a package, or one class, no longer imports all of its siblings: loading a segmentation checkpoint does not
import COCO, albumentations' detection pipeline or torchvision's detection models. The CLI, which lets a config
name any class by its short name, imports them all with :func:`import_all`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_namespace(package: str, homes: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: ``homes`` maps each public name to the
    module defining it (a name whose home is ``package.name`` is that submodule itself)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(homes[name])
        value = module if homes[name] == f"{package}.{name}" else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(homes))

    return __getattr__, __dir__


def import_all(package: str) -> None:
    """Import every module that defines a public name of ``package`` (a lazy namespace or a plain package)."""
    module = importlib.import_module(package)
    for home in sorted(set(getattr(module, "_HOMES", {}).values())):
        if home != package:
            import_all(home)
