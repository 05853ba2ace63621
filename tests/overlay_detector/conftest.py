"""Fixtures for the learned overlay detector: one small trained checkpoint per session."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endofed.shared.data.sample import Sample, SampleMeta
from endofed.shared.overlay_detector import make_composites, train_overlay_detector

torch.set_num_threads(1)

IMAGE_SIZE = 96


def as_sample(image: np.ndarray) -> Sample:
    """A lesion-free sample of ``image``."""
    h, w = image.shape[:2]
    return Sample(image=image, mask=np.zeros((h, w), bool), boxes=np.zeros((0, 4), np.float32),
                  labels=np.zeros(0, np.int64), meta=SampleMeta(source="test"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> str:
    """A detector trained on 32 composites for 30 epochs (~10-25 s on one CPU thread)."""
    out = tmp_path_factory.mktemp("overlay") / "overlay.pt"
    train_overlay_detector(out, n_images=32, image_size=IMAGE_SIZE, epochs=30, batch_size=8,
                           seed=0, device="cpu")
    return str(out)


@pytest.fixture(scope="session")
def fresh():
    """Composites never seen in training (another seed)."""
    return make_composites(16, size=192, seed=4242)
