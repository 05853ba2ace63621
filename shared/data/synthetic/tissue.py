"""Mucosa: colour and texture, folds, lumen, vessels, vignetting and specular highlights."""

from __future__ import annotations

import cv2
import numpy as np

from endofed.shared.data.synthetic.field_of_view import FieldOfView
from endofed.shared.data.synthetic.raster import as_rgb, blur, smooth_noise

# Mucosa base colour (RGB in [0, 1]) before patient tint and device profile.
MUCOSA_RGB = np.array([0.86, 0.47, 0.40], np.float32)
LUMEN_RGB = np.array([0.22, 0.09, 0.07], np.float32)
VESSEL_GAIN = np.array([0.80, 0.55, 0.60], np.float32)


def draw_mucosa(
    rng: np.random.Generator, fov: FieldOfView, tint: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mucosa RGB float image, lumen darkness map (0..1) and vignetting gain map.

    ``tint`` multiplies the mucosa colour per channel (a patient's tissue).

    The smooth parts (colour, folds, lumen, vignetting) are drawn at half resolution
    and upsampled; vessels and fine texture are drawn at full resolution.
    """
    h, w = fov.height, fov.width
    s = min(h, w)
    lh, lw = (h + 1) // 2, (w + 1) // 2
    ls = min(lh, lw)
    fx = lw / w
    base = MUCOSA_RGB * tint * rng.uniform(0.92, 1.06, 3).astype(np.float32)
    low = smooth_noise(rng, lh, lw, ls / 3, 3)
    shade = 1.0 + 0.05 * smooth_noise(rng, lh, lw, ls / 12)
    patch = np.clip(smooth_noise(rng, lh, lw, ls / 8) - 1.2, 0, None)

    # Folds: a blurred dark shadow arc and a lighter crest just beside it.
    shadow = np.zeros((lh, lw), np.float32)
    crest = np.zeros((lh, lw), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        center = (int(rng.uniform(-0.2, 1.2) * lw), int(rng.uniform(-0.2, 1.2) * lh))
        axes = (int(ls * rng.uniform(0.3, 0.9)), int(ls * rng.uniform(0.2, 0.7)))
        angle = float(rng.uniform(0, 180))
        start = float(rng.uniform(0, 360))
        span = float(rng.uniform(60, 170))
        thick = max(1, int(ls * rng.uniform(0.012, 0.03)))
        cv2.ellipse(shadow, center, axes, angle, start, start + span, 1.0, thick, cv2.LINE_AA)
        off = max(1, int(ls * 0.02))
        c2 = (center[0] + off, center[1] + off)
        cv2.ellipse(crest, c2, axes, angle, start, start + span, 1.0, thick, cv2.LINE_AA)
    shade -= 0.35 * np.clip(blur(shadow, ls * 0.015), 0, 1)
    crest = 0.07 * np.clip(blur(crest, ls * 0.02), 0, 1)

    # Lumen: a dark, blurred region inside the field of view.
    lumen = np.zeros((lh, lw), np.float32)
    if rng.random() < 0.5:
        fx0, fy0, fx1, fy1 = (v * fx for v in fov.box)
        cx = int(rng.uniform(fx0 + 0.15 * (fx1 - fx0), fx1 - 0.15 * (fx1 - fx0)))
        cy = int(rng.uniform(fy0 + 0.15 * (fy1 - fy0), fy1 - 0.15 * (fy1 - fy0)))
        axes = (int(ls * rng.uniform(0.08, 0.2)), int(ls * rng.uniform(0.08, 0.2)))
        cv2.ellipse(lumen, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        lumen = np.clip(blur(lumen, ls * 0.05), 0, 1)

    # Vignetting around the centre of the field of view.
    cx, cy = fov.center[0] * fx, fov.center[1] * fx
    xx = ((np.arange(lw, dtype=np.float32) - cx) ** 2)[None, :]
    yy = ((np.arange(lh, dtype=np.float32) - cy) ** 2)[:, None]
    rr = (xx + yy) / (0.25 * (lh * lh + lw * lw))
    vignette = 1 - rng.uniform(0.25, 0.55) * np.clip(rr, 0, 1.5)

    shade += 0.10 * smooth_noise(rng, lh, lw, ls / 3)
    img = base * (1.0 + 0.035 * low) * shade[..., None]
    img += patch[..., None] * np.array([0.05, 0.10, 0.04], np.float32) + crest[..., None]
    lm = (0.9 * lumen)[..., None]
    img = img * (1 - lm) + LUMEN_RGB * lm
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    lumen = cv2.resize(lumen, (w, h), interpolation=cv2.INTER_LINEAR)
    vignette = cv2.resize(vignette, (w, h), interpolation=cv2.INTER_LINEAR)

    # Full resolution: fine texture (one channel) and vessels (smooth random walks).
    detail = 1.0 + 0.025 * smooth_noise(rng, h, w, max(2.0, s / 64))
    vessels = np.zeros((h, w), np.float32)
    step = s * 0.02
    for _ in range(int(rng.integers(3, 12))):
        start = rng.uniform((0, 0), (w, h))
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, int(rng.integers(15, 50))))
        steps = step * np.stack([np.cos(ang), np.sin(ang)], 1)
        pts = np.concatenate([start[None], start + np.cumsum(steps, 0)])
        poly = np.round(pts).astype(np.int32)
        strength = float(rng.uniform(0.3, 0.8))
        cv2.polylines(vessels, [poly], False, strength, max(1, s // 300), cv2.LINE_AA)
    vessels = np.clip(blur(vessels, s * 0.002), 0, 1)
    # Vessel darkening per channel: 1 - v * (1 - gain_c), as one affine colour transform.
    vmat = np.array([[-(1 - g), 1.0] for g in VESSEL_GAIN], np.float32)
    factor = cv2.transform(vessels[..., None], vmat)
    img = cv2.multiply(cv2.multiply(img, as_rgb(detail.astype(np.float32))), factor)
    return img, lumen, vignette


def draw_specular_highlights(
    rng: np.random.Generator, img: np.ndarray, fov: FieldOfView
) -> None:
    """Small saturated white specular blobs inside the field of view (``img`` in place)."""
    h, w = fov.height, fov.width
    s = min(h, w)
    hl = np.zeros((h, w), np.float32)
    fx0, fy0, fx1, fy1 = fov.box
    for _ in range(int(rng.integers(4, 30))):
        c = (int(rng.uniform(fx0, fx1)), int(rng.uniform(fy0, fy1)))
        axes = (
            max(1, int(s * rng.uniform(0.003, 0.02))),
            max(1, int(s * rng.uniform(0.002, 0.01))),
        )
        cv2.ellipse(hl, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    hl = as_rgb(np.clip(blur(hl, s * 0.002), 0, 1))
    img[:] = cv2.add(cv2.multiply(img, 1 - hl), hl)
