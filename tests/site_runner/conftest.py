"""Fixtures for the site-runner tests: synthetic hospitals and app bundles on disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from endofed.shared.data.synthetic import write_sites
from endofed.simulations.federated import project_root

CLIENT_MODULE = "site_client_module"


@pytest.fixture(scope="module")
def runner_hospitals(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three tiny synthetic hospital folders (6 images each)."""
    out = tmp_path_factory.mktemp("runner-hospitals")
    write_sites(out, sites=3, images_per_site=6, seed=2, size=64)
    return [out / f"site_{i}" for i in (1, 2, 3)]


@pytest.fixture
def small_run() -> dict[str, str | int | float | bool]:
    """The smallest run that trains: tiny preset, 64 px, one step per epoch."""
    return {"preset": "tiny", "image-size": 64, "batch-size": 4, "local-epochs": 1,
            "max-steps": 1, "threads": 1, "seed": 3, "amp": False, "augment": False,
            "round-timeout": 600.0}


@pytest.fixture
def write_app():
    """``write_app(app_dir, client_source)``: see :func:`_write_app`."""
    return _write_app


def _write_app(app_dir: Path, client_source: str) -> Path:
    """An app bundle like EndoFed's, plus a client module of its own in the FAB.

    Its ``clientapp`` component is that module; the ServerApp is the installed one.
    """
    app_dir.mkdir(parents=True, exist_ok=True)
    text = (project_root() / "pyproject.toml").read_text()
    include = f'fab-include = ["pyproject.toml", "{CLIENT_MODULE}.py"]'
    text = re.sub(r"^fab-include = \[.*\]$", include, text, count=1, flags=re.M)
    text = re.sub(r'^clientapp = ".*"$', f'clientapp = "{CLIENT_MODULE}:app"', text,
                  count=1, flags=re.M)
    (app_dir / "pyproject.toml").write_text(text)
    (app_dir / f"{CLIENT_MODULE}.py").write_text(client_source)
    return app_dir
