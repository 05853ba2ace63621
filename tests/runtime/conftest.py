"""Shared fixtures for the runtime orchestration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

SMOKE_APP = Path(__file__).resolve().parent.parent / "flower_smoke_app"


@pytest.fixture(scope="session")
def smoke_app() -> Path:
    """Directory of the minimal numpy Flower app used to exercise the runtimes."""
    assert (SMOKE_APP / "pyproject.toml").is_file(), SMOKE_APP
    return SMOKE_APP
