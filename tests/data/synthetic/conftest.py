"""Helpers for the synthetic generator's tests: rendered frames and mask components."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from endofed.shared.data.synthetic import SyntheticFrame, device_profile_for_site, render_frame

SIZE = (96, 112)


def frames(n: int, *, seed0: int = 0, size=SIZE, **kw) -> list[SyntheticFrame]:
    """``n`` frames of seeds ``seed0 ..``, cycling through the four vendor profiles."""
    return [
        render_frame(np.random.default_rng(seed0 + i), size=size,
                     profile=device_profile_for_site(i % 4), **kw)
        for i in range(n)
    ]


def component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Sorted pixel-edge boxes of the mask's 8-connected components."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return sorted((int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:n])


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }
