"""Fixtures for preprocessing tests: synthetic frames and a Kvasir-like hand-drawn frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from endofed.shared.data.sample import Sample, SampleMeta
from endofed.shared.data.synthetic import device_profile_for_site, render_frame, write_site
from endofed.shared.preprocessing import OverlayDetection


def kvasir_like_frame(
    h: int = 240,
    w: int = 280,
    seed: int = 0,
    lesion: tuple[int, int, int, int] | None = None,
    text_at: tuple[int, int] = (3, 40),
) -> tuple[np.ndarray, np.ndarray, dict[str, list[tuple[int, int, int, int]]]]:
    """Octagonal field of view on black, white text top-left, black panel lower-left.

    Returns image, lesion mask and the overlay boxes drawn, by type.
    """
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = 30, 0, w - 10, h
    c = 45
    pts = np.array(
        [[x0 + c, y0], [x1 - c, y0], [x1, y0 + c], [x1, y1 - c], [x1 - c, y1], [x0 + c, y1],
         [x0, y1 - c], [x0, y0 + c]], np.int32)
    fov = np.zeros((h, w), np.uint8)
    cv2.fillPoly(fov, [pts], 1)
    tissue = np.empty((h, w, 3), np.float32)
    tissue[..., 0] = 190 + rng.normal(0, 6, (h, w))
    tissue[..., 1] = 95 + rng.normal(0, 6, (h, w))
    tissue[..., 2] = 80 + rng.normal(0, 6, (h, w))
    img[fov > 0] = np.clip(tissue, 0, 255).astype(np.uint8)[fov > 0]
    mask = np.zeros((h, w), bool)
    if lesion is not None:
        lx0, ly0, lx1, ly1 = lesion
        cv2.ellipse(img, ((lx0 + lx1) // 2, (ly0 + ly1) // 2), ((lx1 - lx0) // 2, (ly1 - ly0) // 2),
                    0, 0, 360, (230, 120, 110), -1)
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, ((lx0 + lx1) // 2, (ly0 + ly1) // 2), ((lx1 - lx0) // 2, (ly1 - ly0) // 2),
                    0, 0, 360, 1, -1)
        mask = m > 0
    panel = (0, h - 60, 70, h)
    img[panel[1]:, : panel[2]] = 0
    for i, t in enumerate(["12/03/2014", "10:45:03"]):
        org = (text_at[0], text_at[1] + 20 * i)
        cv2.putText(img, t, org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (235, 235, 235), 1, cv2.LINE_AA)
    return img, mask, {"border": [(0, 0, x0, h)], "box": [panel]}


def as_sample(image: np.ndarray, mask: np.ndarray, boxes: np.ndarray | None = None) -> Sample:
    if boxes is None:
        if mask.any():
            ys, xs = np.nonzero(mask)
            boxes = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        else:
            boxes = np.zeros((0, 4), np.float32)
    return Sample(
        image=image, mask=mask, boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.ones(len(boxes), np.int64), meta=SampleMeta(source="test"),
    )


@pytest.fixture
def synthetic_frames():
    """Frames from the shared synthetic generator (with overlay ground truth)."""
    frames = []
    for i in range(100):
        rng = np.random.default_rng(1000 + i)
        size = (256, 256) if i % 2 else (224, 288)
        frames.append(render_frame(rng, size=size, profile=device_profile_for_site(i % 4)))
    return frames


class FindsNothing:
    """An overlay detector that finds no overlays (so nothing is cropped)."""

    fingerprint = "finds-nothing:v1"

    def __call__(self, image: np.ndarray) -> OverlayDetection:
        return OverlayDetection(boxes=[])


@pytest.fixture
def site(tmp_path):
    """A small synthetic site on disk (6 images)."""
    root = tmp_path / "site"
    write_site(root, n_images=6, seed=4, size=(96, 112))
    return root
