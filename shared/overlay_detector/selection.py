"""Which overlay detector a site's preprocessing config names, built (the composition step)."""

from __future__ import annotations

import torch

from endofed.shared.overlay_detector.detector import LEARNED, LearnedDetector
from endofed.shared.preprocessing import (
    CLASSICAL,
    ClassicalDetector,
    OverlayDetector,
    PreprocessConfig,
)

#: The names ``PreprocessConfig.detector`` (``preprocess-detector``) may take.
DETECTOR_NAMES: tuple[str, ...] = (CLASSICAL, LEARNED)


def overlay_detector_for(
    config: PreprocessConfig, *, device: str | torch.device | None = None
) -> OverlayDetector:
    """The detector ``config.detector`` names: ``"classical"`` (OpenCV) or ``"learned"``
    (the checkpoint ``config.detector_path``, run on ``device``, default CPU).

    Raises ``ValueError`` for another name or an unusable checkpoint and
    ``FileNotFoundError`` for a missing one.
    """
    if config.detector == CLASSICAL:
        return ClassicalDetector(config)
    if config.detector == LEARNED:
        return LearnedDetector(config, device=device)
    raise ValueError(
        f"unknown overlay detector {config.detector!r}; available: {', '.join(DETECTOR_NAMES)}"
    )
