"""README's Layout names every module of the package (a new module without a line there fails here)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\b(\w+)(?:\.py)?\b", layout))
    missing = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "cbsa_dense").rglob("*.py"))
               if path.name not in ("__init__.py", "__main__.py") and path.stem not in named]
    assert not missing, f"README's Layout does not name: {missing}"
