"""Optional dependencies: a missing one stops the command with one line naming the extra that installs it.

The base install (``[project] dependencies`` in pyproject.toml) runs training, evaluation and prediction;
what else a command needs comes from an extra (``[project.optional-dependencies]``), e.g.
``pip install 'cbsa_dense[export]'`` for ONNX export. Import such a package through :func:`require` at the
place it is used, never at module level, so that the rest of the package works without it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cbsa_dense.errors import UserError

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(UserError):
    """An optional dependency a command needs is not installed (or cannot be imported)."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (an optional dependency, installed by the extra ``extra``) and return it.

    Args:
        module: the import name (``"onnxruntime"``).
        extra: the pyproject.toml extra that installs it (``"export"``).
        purpose: what needs it, as the user asked for it (``"cbsa-dense export --format onnx"``).

    Raises:
        MissingDependencyError: the package is not installed, or is installed but fails to import; one line
            naming the package and the ``pip install 'cbsa_dense[<extra>]'`` that fixes it.
    """
    install = f"pip install 'cbsa_dense[{extra}]'"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module != err.name and not module.startswith(err.name + "."):
            raise MissingDependencyError(f"{purpose} needs {module}, which is installed but cannot be imported "
                                         f"(it lacks {err.name}): reinstall it with {install}") from err
        raise MissingDependencyError(f"{purpose} needs the package {module}, which is not installed (it is not part "
                                     f"of the base install): {install}") from err
    except ImportError as err:
        detail = " ".join(str(err).split())[:160]
        raise MissingDependencyError(f"{purpose} needs {module}, which is installed but cannot be imported "
                                     f"({detail}): reinstall it with {install}") from err
