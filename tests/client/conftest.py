"""Client tests: one torch thread, a tiny on-disk site and DP site runtimes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def dp_site_dir(kvasir_site: Callable[..., Path]) -> Path:
    """Six 64 x 64 Kvasir-style images (five with a lesion, one normal)."""
    specs = {f"img{i}": [(8 + 3 * i, 10, 40 + i, 44)] for i in range(5)}
    specs["normal"] = []
    return kvasir_site(specs, size=(64, 64), name="site_a")


@pytest.fixture
def dp_run_config() -> dict[str, Any]:
    """Run config of a 3-round study with a per-site budget of epsilon 8."""
    return {
        "preset": "tiny",
        "image-size": 64,
        "batch-size": 4,
        "dp-batch-size": 0,  # the DP batch is batch-size (tiny test sites)
        "val-fraction": 0.0,
        "augment": False,
        "local-epochs": 1,
        "num-server-rounds": 3,
        "learning-rate": 1e-3,
        "dp-epsilon": 8.0,
        "dp-delta": 1e-5,
        "dp-max-grad-norm": 1.0,
        "dp-accountant": "rdp",
        "device": "cpu",
    }


@pytest.fixture
def make_runtime(dp_site_dir: Path, dp_run_config: dict[str, Any], tmp_path: Path):
    """``make_runtime(**run_overrides)``: a fresh SiteRuntime (a new SuperNode process)."""
    from endofed.client.runtime import build_site_runtime

    def make(**overrides: Any):
        run = {**dp_run_config, **overrides}
        node = {"data-path": str(dp_site_dir), "site-name": "a",
                "state-dir": str(tmp_path / "state")}
        return build_site_runtime(run, node)

    return make
