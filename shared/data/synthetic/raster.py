"""Small raster helpers shared by the synthetic generator's layers (float RGB in [0, 1])."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: An integer pixel-edge box ``(x0, y0, x1, y1)``: columns ``x0 .. x1 - 1``.
Box = tuple[int, int, int, int]


def frame_shape(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` of ``size`` (a single side or ``(H, W)``); at least 32 x 32."""
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise ValueError(f"size must be at least 32x32, got {w}x{h}")
    return h, w


def smooth_noise(
    rng: np.random.Generator, h: int, w: int, cell: float, ch: int = 1
) -> np.ndarray:
    """Zero-mean, unit-ish low-frequency noise: a random grid upsampled bicubically."""
    gh, gw = max(2, round(h / cell)) + 1, max(2, round(w / cell)) + 1
    grid = rng.standard_normal((gh, gw, ch)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, ch) if ch > 1 else out.reshape(h, w)


def as_rgb(m: np.ndarray) -> np.ndarray:
    """A one-channel float map repeated to three channels (for fast cv2 arithmetic)."""
    return cv2.merge([m, m, m])


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with reflected borders; a no-op for ``sigma <= 0.2``."""
    if sigma <= 0.2:
        return a
    return cv2.GaussianBlur(a, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)


def bbox_of(mask: np.ndarray) -> Box | None:
    """Pixel-edge XYXY box of a boolean mask, ``None`` when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def boxes_intersect(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two XYXY boxes share any pixel area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
