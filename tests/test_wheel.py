"""The built wheel is a product on its own: it ships the configs and the license, installs (not editable) into
a fresh virtual environment, and from an empty directory lists and composes the shipped configs (default
suite: no package index needed), trains the demo by its shipped config name and evaluates the checkpoint
without a training config (slow: ``pytest -m slow tests/test_wheel.py``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.relative_to(ROOT / "configs").as_posix()
                 for p in (ROOT / "configs").rglob("*.yaml"))
#: Every package of the checkout, as the wheel must hold it.
PACKAGES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "cbsa_dense").rglob("__init__.py"))

#: Small demo run: 2 training batches, 1 validation batch, 8 + 4 generated images.
DEMO_DATA = ["--data.init_args.root", "data", "--data.init_args.num_train", "8", "--data.init_args.num_val", "4",
             "--data.init_args.batch_size", "4", "--data.init_args.val_batch_size", "4"]


def _env() -> dict[str, str]:
    """The environment without anything that would import cbsa_dense from the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True)
    print(f"[{time.perf_counter() - start:6.1f} s] rc={out.returncode} {' '.join(str(c) for c in cmd[:4])} ...")
    return out


def _tail(out: subprocess.CompletedProcess, lines: int = 25) -> str:
    return "\n".join((out.stdout + "\n" + out.stderr).strip().splitlines()[-lines:])


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a clean copy of what the wheel is made of (an in-tree build/ folder may hold stale files)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is needed to build the wheel without build isolation")
    source = tmp_path / "source"
    source.mkdir()
    shutil.copytree(ROOT / "cbsa_dense", source / "cbsa_dense",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    shutil.copytree(ROOT / "configs", source / "configs")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "requirements.txt"):
        shutil.copy2(ROOT / name, source / name)
    out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                tmp_path / "dist", source], tmp_path)
    assert out.returncode == 0, _tail(out)
    wheels = list((tmp_path / "dist").glob("cbsa_dense-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _venv_with(wheel: Path, tmp_path: Path, empty: Path, bare_fallback: bool = True) -> Path:
    """A venv with the wheel installed, importing cbsa_dense from its own site-packages. First a venv that sees
    the system's packages (torch & co.) with only the wheel installed; if cbsa_dense then still comes from
    elsewhere (an editable install's finder), a bare venv with a full install of the wheel's dependencies."""
    for system in (True, False)[:2 if bare_fallback else 1]:
        venv = tmp_path / ("venv-system" if system else "venv-bare")
        out = _run([sys.executable, "-m", "venv", *(["--system-site-packages"] if system else []), venv], tmp_path)
        assert out.returncode == 0, _tail(out)
        python = venv / "bin" / "python"
        install = [python, "-m", "pip", "install", "--quiet", *(["--no-deps", "--no-index"] if system else []), wheel]
        out = _run(install, empty)
        if out.returncode != 0:
            if system:
                continue
            pytest.skip(f"pip could not install the wheel and its dependencies (no package index reachable?): "
                        f"{_tail(out, 3)}")
        where = _run([python, "-c", "import cbsa_dense; print(cbsa_dense.__file__)"], empty)
        assert where.returncode == 0, _tail(where)
        location = Path(where.stdout.strip().splitlines()[-1]).resolve()
        print(f"cbsa_dense imported from {location}")
        if location.is_relative_to(venv.resolve()):
            assert not location.is_relative_to(ROOT.resolve())
            return venv
    raise AssertionError(f"cbsa_dense is imported from {location}, not from the venv")


def _check_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert len(SHIPPED) >= 20
    missing = [n for n in SHIPPED if f"cbsa_dense/configs/{n}" not in names]
    assert not missing, f"configs missing from the wheel: {missing}"
    missing = [n for n in PACKAGES if n not in names]
    assert not missing, f"packages missing from the wheel: {missing}"
    assert not any(n.startswith("configs/") for n in names), "the configs belong inside the package"
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), \
        sorted(n for n in names if ".dist-info/" in n)
    metadata = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "MIT" in metadata
    assert "Requires-Dist: opencv-python-headless" in metadata


def test_built_wheel_ships_the_configs_and_finds_them_from_an_empty_directory(tmp_path):
    """Default suite: build the wheel (no build isolation, no index), install it without dependencies into a
    venv that sees the system's packages, and from an empty folder list the configs and compose one by name."""
    wheel = _build_wheel(tmp_path)
    _check_contents(wheel)
    empty = tmp_path / "empty"
    empty.mkdir()
    venv = _venv_with(wheel, tmp_path, empty, bare_fallback=False)
    site = venv.resolve()

    out = _run([venv / "bin" / "cbsa-dense", "configs"], empty)
    assert out.returncode == 0, _tail(out)
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    assert listed == SHIPPED, out.stdout

    probe = ("import sys; from cbsa_dense.cli import config_files as c; "
             "print(c.CONFIG_DIR.resolve()); print(c.resolve_config(sys.argv[1]).resolve()); "
             "config = c.load_config(sys.argv[1]); print(config['data']['class_path']); "
             "print(config['model']['init_args']['head']['init_args']['n_layers'])")
    out = _run([venv / "bin" / "python", "-c", probe, "paper/ade20k_cbt_small"], empty)
    assert out.returncode == 0, _tail(out)
    config_dir, resolved, data, n_layers = out.stdout.strip().splitlines()[-4:]
    assert Path(config_dir) == site / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
        "site-packages" / "cbsa_dense" / "configs"
    assert Path(resolved) == Path(config_dir) / "paper" / "ade20k_cbt_small.yaml"
    assert data.endswith("ADE20KDataModule") and n_layers == "3"      # data from its _base_ chain, head its own
    assert not (empty / "cbsa_dense").exists() and not (empty / "configs").exists()


@pytest.mark.slow
def test_wheel_installs_and_runs_the_demo_from_an_empty_directory(tmp_path):
    start = time.perf_counter()
    wheel = _build_wheel(tmp_path)
    _check_contents(wheel)

    empty = tmp_path / "empty"
    empty.mkdir()
    venv = _venv_with(wheel, tmp_path, empty)
    cli = venv / "bin" / "cbsa-dense"

    out = _run([cli, "--help"], empty)
    assert out.returncode == 0 and "configs" in out.stdout, _tail(out)
    out = _run([cli, "configs"], empty)
    assert out.returncode == 0 and "demo_seg.yaml" in out.stdout, _tail(out)

    out = _run([cli, "fit", "--config", "demo_seg.yaml", "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false", *DEMO_DATA], empty)
    assert out.returncode == 0, _tail(out)
    checkpoints = sorted((empty / "runs").rglob("last.ckpt"))
    assert len(checkpoints) == 1, _tail(out)

    out = _run([cli, "test", "--ckpt_path", checkpoints[0], "--data", "cbsa_dense.data.demo_seg.DemoSegDataModule",
                *DEMO_DATA, "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"], empty)
    assert out.returncode == 0, _tail(out)
    assert "test_miou" in out.stdout + out.stderr, _tail(out)
    assert not (empty / "cbsa_dense").exists()
    print(f"wheel test: {time.perf_counter() - start:.1f} s in all")
