"""The tiny experiment every simulations test builds on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from endofed.simulations.experiment_spec import ExperimentSpec


def _tiny_spec(out: Path, **kw: Any) -> ExperimentSpec:
    base: dict[str, Any] = dict(
        out=out, sites=2, images_per_site=6, image_size=64, batch_size=4, rounds=2,
        local_epochs=1, preset="tiny", seeds=[0], dp=[0.0], extra_config={"threads": 1},
        progress=False, timeout=900,
    )  # fmt: skip
    base.update(kw)
    return ExperimentSpec(**base)


@pytest.fixture(scope="session")
def tiny_spec() -> Callable[..., ExperimentSpec]:
    """``tiny_spec(out, **overrides)``: 2 synthetic hospitals of 6 images, 2 rounds of
    1 epoch, 64 px, seed 0, no DP, no progress bars."""
    return _tiny_spec
