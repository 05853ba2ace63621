"""Overlay noise in endoscopic frames (black border, burnt-in text, panels, tube): the types.

An overlay detector is any callable ``image -> OverlayDetection`` with a
``fingerprint`` (:class:`OverlayDetector`). The pipeline takes one as a part
(``detector=``); its default is the classical detector
(:mod:`endofed.shared.preprocessing.classical_detector`). The learned detector lives
above the model and engine (:mod:`endofed.shared.overlay_detector`) and is built by the
composition roots when a site's config names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from endofed.shared.data.synthetic.overlays import OVERLAY_TYPES

__all__ = ["OVERLAY_TYPES", "OverlayBox", "OverlayDetection", "OverlayDetector",
           "masks_from_boxes"]


@dataclass(frozen=True)
class OverlayBox:
    """One overlay region: ``type`` in :data:`OVERLAY_TYPES`, ``xyxy`` in pixels."""

    type: str
    xyxy: tuple[float, float, float, float]
    score: float = 1.0

    def __post_init__(self) -> None:
        if self.type not in OVERLAY_TYPES:
            raise ValueError(f"overlay type must be one of {OVERLAY_TYPES}, got {self.type!r}")


@dataclass
class OverlayDetection:
    """Detector output: typed boxes plus, when the detector knows them, pixel masks.

    ``content`` is the clinical field of view (bool, HxW) without border and panels;
    ``text`` marks burnt-in text stroke pixels. A detector that only yields boxes
    leaves them ``None`` and :func:`masks_from_boxes` derives them.
    """

    boxes: list[OverlayBox]
    content: np.ndarray | None = None
    text: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def of_type(self, kind: str) -> list[OverlayBox]:
        return [b for b in self.boxes if b.type == kind]


@runtime_checkable
class OverlayDetector(Protocol):
    """Finds the overlays of an RGB uint8 HxWx3 frame.

    ``fingerprint`` names the detector and everything its output depends on (weights
    included): preprocessing cache keys contain it, so another detector never reuses
    cached results.
    """

    @property
    def fingerprint(self) -> str: ...

    def __call__(self, image: np.ndarray) -> OverlayDetection: ...


def masks_from_boxes(
    detection: OverlayDetection, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(content, text) masks of a detection; derived from its boxes when it has none.

    Without pixel masks, border and panel boxes are removed from the content, and text
    strokes are the bright low-saturation pixels inside text boxes.
    """
    h, w = image.shape[:2]
    content = detection.content
    if content is None:
        content = np.ones((h, w), bool)
        for b in detection.boxes:
            if b.type in ("border", "box"):
                x0, y0, x1, y1 = (int(round(v)) for v in b.xyxy)
                content[y0:y1, x0:x1] = False
    text = detection.text
    if text is None:
        text = np.zeros((h, w), bool)
        minc = image.min(axis=2)
        for b in detection.of_type("text"):
            x0, y0, x1, y1 = (int(round(v)) for v in b.xyxy)
            patch = minc[y0:y1, x0:x1]
            if patch.size:
                text[y0:y1, x0:x1] |= patch > max(100, int(np.percentile(patch, 70)))
    return content, text
