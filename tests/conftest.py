"""Shared pytest fixtures. Every test runs on CPU with tiny models on generated data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: ``../shared`` beside the checkout (read-only reference data; tests skip when it is absent).
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference data folder {SHARED} is absent")
    return SHARED
