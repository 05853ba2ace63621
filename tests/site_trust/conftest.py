"""Fixtures for app approval tests: a copy of tests/flower_smoke_app and FABs Flower builds."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

SMOKE_APP = Path(__file__).resolve().parents[1] / "flower_smoke_app"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A fresh copy of the smoke app (the folder name is a valid Flower project name)."""
    dest = tmp_path / "smoke-app"  # flwr build: letters, digits, hyphens
    shutil.copytree(SMOKE_APP, dest, ignore=shutil.ignore_patterns("__pycache__", "*.fab"))
    return dest


def build_fab(app: Path) -> tuple[str, bytes]:
    """``(Fab.hash_str, content)`` exactly as ``flwr run`` makes them."""
    from flwr.cli.build import build_fab_from_disk

    content = build_fab_from_disk(app)
    return hashlib.sha256(content).hexdigest(), content
