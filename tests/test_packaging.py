import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    """The canonical distribution name of a requirement (PEP 503: lower case, runs of -_. as one -)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0]).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _third_party_imports(folder: Path) -> dict[str, str]:
    """Top-level module name -> one file importing it, for every absolute import in ``folder``'s Python files
    (function-level imports included) that is neither the standard library nor the project itself."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("cbsa_dense", "tests", "__future__"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _undeclared(folder: Path, declared: set[str]) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in _third_party_imports(folder).items():
        dists = {_name(d) for d in providers.get(module, [])}
        if not dists & declared:
            missing.append(f"{module} (imported in {where}; installed from {sorted(dists) or 'nothing'})")
    return missing


def test_requirements_txt_holds_what_running_needs():
    project = _project()
    runtime = set(project["dependencies"])
    listed = {line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert listed == runtime, f"only in requirements.txt: {listed - runtime}; only in pyproject: {runtime - listed}"
    test_tools = {_name(r) for r in project["optional-dependencies"]["test"]}
    assert {"pytest", "ruff"} <= test_tools
    assert not {_name(r) for r in runtime} & {"pytest", "ruff", "setuptools"}, "test tools belong in the test extra"
    assert project["scripts"]["cbsa-dense"] == "cbsa_dense.cli:main"
    assert "albumentations==2.0.8" in runtime                     # last MIT release, pinned on purpose
    assert not any(_name(r) == "torch" and "<2.14" in r for r in runtime)


def test_every_third_party_import_is_a_declared_dependency():
    project = _project()
    runtime = {_name(r) for r in project["dependencies"]}
    extras = {_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    assert "opencv-python-headless" in runtime                    # cv2, imported by the augmentation pipelines
    assert not _undeclared(ROOT / "cbsa_dense", runtime | extras)
    test_tools = {_name(r) for r in project["optional-dependencies"]["test"]}
    assert not _undeclared(ROOT / "tests", runtime | test_tools)


def test_the_import_check_sees_an_undeclared_import(tmp_path, monkeypatch):
    """The check above would fail on an import that no declared distribution provides."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("import os\n\ndef f():\n    import cv2\n    from yaml import safe_load\n")
    assert sorted(_third_party_imports(tmp_path / "pkg")) == ["cv2", "yaml"]
    assert [m.split()[0] for m in _undeclared(tmp_path / "pkg", {"pyyaml"})] == ["cv2"]


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
