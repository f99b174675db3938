"""The command line sits above the library: nothing outside ``cbsa_dense/cli/`` imports it, and importing it
does not import Lightning (plain subcommands start without it)."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cbsa_dense"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_library_does_not_import_the_cli():
    upward = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "cli") in path.parents:
            continue
        hits = sorted(n for n in _imported_modules(path) if n == "cbsa_dense.cli" or n.startswith("cbsa_dense.cli."))
        if hits:
            upward[str(path.relative_to(PACKAGE))] = hits
    assert not upward, f"modules below the CLI import it: {upward}"


def test_importing_the_cli_does_not_import_lightning():
    probe = "import sys, cbsa_dense.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning'))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
