"""Fixtures for the real-process federation tests: synthetic hospitals on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from endofed.shared.data.synthetic import write_sites


@pytest.fixture
def deploy_run_config() -> dict[str, str | int | float | bool]:
    """A run config small enough for a loaded 2-core machine (ClientApp start-up,
    not training, dominates each round)."""
    return {
        "preset": "tiny",
        "image-size": 64,
        "batch-size": 4,
        "local-epochs": 1,
        "threads": 1,
        "seed": 3,
        "amp": False,
    }


@pytest.fixture(scope="module")
def hospital_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three synthetic hospital folders (Kvasir layout, 10 images each)."""
    out = tmp_path_factory.mktemp("hospitals")
    write_sites(out, sites=3, images_per_site=10, seed=1, size=96)
    return [out / f"site_{i}" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def hospital_nodes(hospital_dirs: list[Path]) -> list[dict[str, str]]:
    """Deployment node configs: each hospital names its own folder and itself."""
    return [{"data-path": str(d), "site-name": f"hosp-{i + 1}"}
            for i, d in enumerate(hospital_dirs)]
