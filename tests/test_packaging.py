import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=\[; ]", req.strip(), maxsplit=1)[0].lower()


def test_requirements_txt_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    listed = {line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert listed == declared
    assert project["scripts"]["cbsa-dense"] == "cbsa_dense.cli:main"
    assert "albumentations==2.0.8" in declared                     # last MIT release, pinned on purpose
    assert not any(_name(r) == "torch" and "<2.14" in r for r in declared)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'python -m pip install -e ".[test]" && python -m pytest -q'
    assert command in readme
    assert command in ci


def test_console_script_lists_extra_subcommands():
    out = subprocess.run([sys.executable, "-m", "cbsa_dense.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT)          # no timeout: a correct run on a loaded machine must pass
    assert out.returncode == 0, out.stderr
    for word in ("fit", "validate", "test", "predict", "score", "info", "benchmark"):
        assert word in out.stdout
