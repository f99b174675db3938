"""The ``cbsa-dense`` command line: everything that reads the user's command line and config files.

Modules:

- :mod:`~cbsa_dense.cli.entry`: :func:`main`, the console script (one-line user errors, exit status 2); the
  top-level ``--help`` / ``--version``, the plain subcommands, missing config files and ``--ckpt_path`` files are
  answered without importing Lightning.
- :mod:`~cbsa_dense.cli.lightning_cli`: ``fit``/``validate``/``test``/``predict``
  (:class:`~cbsa_dense.cli.lightning_cli.CBSADenseCLI`, a ``LightningCLI``); imported only for them.
- :mod:`~cbsa_dense.cli.config_files`: config lookup by name and ``_base_`` composition.
- :mod:`~cbsa_dense.cli.stored_run`: a ``--ckpt_path`` checkpoint read once, its task config replayed.
- :mod:`~cbsa_dense.cli.eval_runs`: where ``validate``/``test``/``predict`` write.
- :mod:`~cbsa_dense.cli.checks`: output locations checked before any work.
- :mod:`cbsa_dense.cli.commands`: the plain subcommands (``score``, ``info``, ``benchmark``, ...), one module
  each with ``main(argv) -> int``.
- :mod:`~cbsa_dense.cli.private_api`: the one list of private Lightning / jsonargparse (and other) names the
  package uses, each with its reason.

Nothing below this package imports it (the library does not depend on its command line). Importing this
package is cheap: Lightning is imported only when a training subcommand runs or a Lightning-side name below
is asked for.
"""

from __future__ import annotations

from cbsa_dense.cli.entry import EXTRA_COMMANDS, TRACEBACK_ENV, main

__all__ = ["main", "EXTRA_COMMANDS", "TRACEBACK_ENV", "CBSADenseCLI", "register_short_names"]

#: Names of :mod:`cbsa_dense.cli.lightning_cli` also reachable here (imported from there on first use).
_LIGHTNING_NAMES = ("CBSADenseCLI", "register_short_names", "_routed_option_message")


def __getattr__(name: str):
    if name in _LIGHTNING_NAMES:
        from cbsa_dense.cli import lightning_cli

        return getattr(lightning_cli, name)
    raise AttributeError(f"module 'cbsa_dense.cli' has no attribute {name!r}")

