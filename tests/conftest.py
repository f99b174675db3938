"""Shared pytest fixtures. Every test runs on CPU with tiny models on generated data."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported before any test captures stderr: see below)
import pytest
import torch

from cbsa_dense.cli import main as cli_main

# Lightning attaches a logging StreamHandler to the sys.stderr of the moment it is first imported. The package
# imports it lazily now (cbsa-dense --help and cbsa_dense.load start without it), so the first in-process CLI
# run under capsys would bind that handler to a captured stream pytest closes after the test, and every later
# CLI test would print "--- Logging error --- I/O operation on closed file". Importing it here binds it to
# the real stderr, as a user's process has it.
# Imported here, before pytest puts its capture handler on the root logger, Lightning also sets its logger's
# propagate to False (it does so whenever the root has no handler), and caplog, which listens on the root, would
# see none of the lines printed through rank_zero_info. Tests read those lines, so they propagate again; the
# StreamHandler above still prints them once.
logging.getLogger("lightning.pytorch").propagate = True

#: ``../shared`` beside the checkout (read-only reference data; tests skip when it is absent).
SHARED = Path(__file__).resolve().parents[2] / "shared"
ROOT = Path(__file__).resolve().parents[1]
#: The shipped configs a user runs (not the ``base/`` building blocks nor the ``trainer/`` presets).
CONFIG_DIR = ROOT / "configs"
TASK_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.parent.name not in ("trainer", "base"))


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference data folder {SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def seg_run(tmp_path_factory) -> Path:
    """A tiny demo-segmentation run trained through the real CLI (1 epoch, 4 images), logged to
    TensorBoard, with the explanation callback on (the demo config draws validation predictions too); its checkpoint serves the explain and export tests."""
    run = tmp_path_factory.mktemp("seg_run")
    cli_main(["fit", "--config", str(ROOT / "configs" / "demo_seg.yaml"),
              "--data.init_args.root", str(run / "data"), "--data.init_args.num_train", "4",
              "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2",
              "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
              "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run / "runs"),
              "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
              "--trainer.logger.save_dir", str(run / "runs"), "--trainer.logger.name", "demo_seg",
              "--trainer.callbacks+", "cbsa_dense.callbacks.ExplainCallback",
              "--trainer.callbacks.every_n_epochs", "1", "--trainer.callbacks.layers", "[0, -1]"])
    return run


@pytest.fixture(scope="session")
def seg_ckpt(seg_run) -> Path:
    return next((seg_run / "runs").rglob("last.ckpt"))


@pytest.fixture(scope="session")
def det_ckpt(tmp_path_factory) -> Path:
    """A tiny demo-detection run (FCOS) trained through the real CLI for 2 steps."""
    run = tmp_path_factory.mktemp("det_run")
    threads = torch.get_num_threads()
    try:
        cli_main(["fit", "--config", str(ROOT / "configs" / "demo_det.yaml"),
                  "--data.init_args.root", str(run / "data"), "--data.init_args.num_train", "4",
                  "--data.init_args.num_val", "2", "--data.init_args.batch_size", "2",
                  "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1",
                  "--trainer.check_val_every_n_epoch", "1", "--trainer.default_root_dir", str(run / "runs"),
                  "--trainer.logger.init_args.save_dir", str(run / "runs")])
    finally:
        torch.set_num_threads(threads)                   # the demo datamodule sets 1 thread
    return next((run / "runs").rglob("last.ckpt"))


def cli_user_error(argv: list[str], capsys) -> str:
    """Run the real ``cbsa-dense`` entry point, assert it stops on a user error the way users see it
    (exit status 2, exactly one line on stderr ``cbsa-dense <sub>: error: ...``, no traceback), and
    return that line."""
    capsys.readouterr()
    status = cli_main(list(argv))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    error_lines = [line for line in lines if ": error: " in line]
    assert status == 2, f"exit status {status}; stderr:\n{err}"
    assert "Traceback" not in err + out, err
    assert len(error_lines) == 1, err
    words = argv[:2] if argv[:1] == ["score"] else argv[:1]         # `score` names its kind: `score coco`
    subcommand = " ".join(w for w in words if not w.startswith("-"))
    assert error_lines[0].startswith(f"cbsa-dense {subcommand}".rstrip() + ": error: "), error_lines[0]
    return error_lines[0]
