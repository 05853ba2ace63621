"""Lesions by morphology: which classes a frame may hold, and how each lesion is painted.

``protruding`` is a shaded dome with a highlight, ``flat`` a subtle, low-contrast
colour/texture change, ``depressed`` a darker or paler centre inside a lighter rim.
Lesions lie inside the frame's clinical box and never touch each other, so each lesion
is one 8-connected mask component and its box is exactly the box of its own mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from endofed.shared.data.sample import NORMAL_CLASS_NAME
from endofed.shared.data.synthetic.raster import Box, bbox_of, blur, smooth_noise

MORPHOLOGIES: tuple[str, ...] = ("protruding", "flat", "depressed")


@dataclass(frozen=True)
class LesionConfig:
    """Which lesions a frame may hold. Classes are data: labels are ``1..K``.

    Each lesion draws its class uniformly from ``class_names`` and then a morphology
    from ``class_morphologies[class]``. Without that mapping, a single class takes all
    :data:`MORPHOLOGIES`; with several classes, a class named after a morphology takes
    that morphology and the others cycle through them. With several classes each class
    also gets its own colour tint, so classes sharing a morphology stay separable.
    ``radius_range`` is the lesion radius as a fraction of ``min(H, W)``.
    """

    class_names: tuple[str, ...] = ("lesion",)
    class_morphologies: Mapping[str, tuple[str, ...]] | None = None
    max_lesions: int = 3
    empty_fraction: float = 0.25
    radius_range: tuple[float, float] = (0.06, 0.17)

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ValueError("class_names must name at least one lesion class")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        if NORMAL_CLASS_NAME in self.class_names:
            raise ValueError(f"'{NORMAL_CLASS_NAME}' is reserved for lesion-free images")
        if not 0.0 <= self.empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {self.empty_fraction}")
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be >= 1, got {self.max_lesions}")
        lo, hi = self.radius_range
        if not 0 < lo <= hi < 0.5:
            raise ValueError(f"radius_range must satisfy 0 < lo <= hi < 0.5, got {lo, hi}")
        for name, morphs in self.morphology_map().items():
            bad = [m for m in morphs if m not in MORPHOLOGIES]
            if bad or not morphs:
                raise ValueError(
                    f"class {name!r}: morphologies must be a non-empty subset of "
                    f"{MORPHOLOGIES}, got {morphs}"
                )

    def morphology_map(self) -> dict[str, tuple[str, ...]]:
        """Class name -> allowed morphologies (defaults resolved)."""
        if self.class_morphologies is not None:
            missing = [c for c in self.class_names if c not in self.class_morphologies]
            if missing:
                raise ValueError(f"class_morphologies has no entry for classes {missing}")
            return {c: tuple(self.class_morphologies[c]) for c in self.class_names}
        if len(self.class_names) == 1:
            return {self.class_names[0]: MORPHOLOGIES}
        return {
            c: (c,) if c in MORPHOLOGIES else (MORPHOLOGIES[i % len(MORPHOLOGIES)],)
            for i, c in enumerate(self.class_names)
        }


class PlacedLesions(NamedTuple):
    """The lesions painted into a frame: union mask, boxes, 1-based labels, morphologies."""

    mask: np.ndarray  # bool (H, W)
    boxes: np.ndarray  # float32 (N, 4) XYXY
    labels: np.ndarray  # int64 (N,)
    morphologies: list[str]


def _lesion_polygon(
    rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    """A smooth, irregular closed outline around ``(cx, cy)`` (int32 points)."""
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 5):
        r += rng.uniform(0, 0.12 / k * 2) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    rot = rng.uniform(0, np.pi)
    x = rx * r * np.cos(t)
    y = ry * r * np.sin(t)
    xr = cx + x * math.cos(rot) - y * math.sin(rot)
    yr = cy + x * math.sin(rot) + y * math.cos(rot)
    return np.round(np.stack([xr, yr], 1)).astype(np.int32)


def _paint_lesion(
    rng: np.random.Generator,
    img: np.ndarray,
    mask: np.ndarray,
    box: Box,
    morphology: str,
    tint: np.ndarray,
) -> None:
    """Paint one lesion in place, only on the pixels of ``mask`` (within ``box``)."""
    x0, y0, x1, y1 = box
    m = mask[y0:y1, x0:x1]
    mu8 = np.pad(m.astype(np.uint8), 1)
    d = cv2.distanceTransform(mu8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    radius = float(d.max())
    dn = blur(d / max(radius, 1e-6), radius * 0.15) * m
    patch = img[y0:y1, x0:x1]
    hh, ww = m.shape
    tex = smooth_noise(rng, hh, ww, max(2.0, radius / 3))
    if morphology == "protruding":
        col = np.array([0.92, 0.56, 0.48], np.float32) * rng.uniform(0.9, 1.05, 3)
        dome = np.sqrt(dn)
        gy, gx = np.gradient(dome)
        light = np.clip((0.6 * gx + 0.8 * gy) * radius, -1, 1)
        shade = 1.0 + 0.35 * light - 0.25 * (1 - dome)
        alpha = np.clip(dn * 5, 0, 1) * rng.uniform(0.55, 0.8)
        new = patch * (1 - alpha[..., None]) + (col * tint) * alpha[..., None]
        new = new * (shade * (1 + 0.06 * tex))[..., None]
        # A specular highlight near the dome top, towards the light.
        ys, xs = np.nonzero(dn > 0.55)
        if ys.size:
            i = int(rng.integers(ys.size))
            r = max(1, int(radius * rng.uniform(0.08, 0.18)))
            hl = np.zeros((hh, ww), np.uint8)
            cv2.circle(hl, (int(xs[i]), int(ys[i])), r, 1, -1)
            new[hl.astype(bool)] = 1.0
    elif morphology == "flat":
        if rng.random() < 0.5:
            target = patch * np.array([1.06, 0.82, 0.84], np.float32)  # redder
        else:
            target = patch * 0.6 + np.array([0.95, 0.74, 0.68], np.float32) * 0.4  # paler
        alpha = np.clip(dn * 3, 0, 1) * rng.uniform(0.45, 0.65)
        new = patch * (1 - alpha[..., None]) + target * tint * alpha[..., None]
        new = new * (1 + 0.08 * tex * alpha)[..., None]
    elif morphology == "depressed":
        rim = np.clip(1 - np.abs(dn - 0.15) / 0.15, 0, 1)
        core = np.clip((dn - 0.3) / 0.3, 0, 1)
        if rng.random() < 0.5:
            centre = np.array([0.55, 0.22, 0.20], np.float32)  # dark red
        else:
            centre = np.array([0.88, 0.80, 0.68], np.float32)  # pale, fibrin-like
        centre = centre * tint
        a = core * rng.uniform(0.55, 0.8)
        new = patch * (1 - a[..., None]) + centre * a[..., None]
        new = new * (1 + 0.18 * rim + 0.06 * tex * core)[..., None]
    else:
        raise ValueError(f"unknown morphology {morphology!r}; expected one of {MORPHOLOGIES}")
    patch[m] = new[m]


def place_lesions(
    rng: np.random.Generator,
    img: np.ndarray,
    *,
    clinical_box: Box,
    lumen: np.ndarray,
    config: LesionConfig,
) -> PlacedLesions:
    """Paint 0..``config.max_lesions`` lesions into ``img`` (float RGB, in place).

    Each lesion lies inside ``clinical_box``, keeps a gap to the others and stays out
    of the dark lumen; a lesion that finds no such place in 25 tries is left out.
    """
    cfg = config
    h, w = img.shape[:2]
    s = min(h, w)
    union = np.zeros((h, w), bool)
    keep_out = np.zeros((h, w), bool)  # dilated lesions: keep a gap between lesions
    boxes, labels, morphs = [], [], []
    n = 0 if rng.random() < cfg.empty_fraction else int(
        rng.choice(np.arange(1, cfg.max_lesions + 1), p=_count_weights(cfg.max_lesions))
    )
    cx0, cy0, cx1, cy1 = clinical_box
    morph_map = cfg.morphology_map()
    multi = len(cfg.class_names) > 1
    kernel = np.ones((5, 5), np.uint8)
    for _ in range(n):
        ci = int(rng.integers(len(cfg.class_names)))
        choices = morph_map[cfg.class_names[ci]]
        morph = choices[int(rng.integers(len(choices)))]
        tint = _class_tint(ci, len(cfg.class_names)) if multi else np.ones(3, np.float32)
        for _attempt in range(25):
            r = s * rng.uniform(*cfg.radius_range)
            if morph == "flat":
                r *= 1.2
            rx, ry = r * rng.uniform(0.75, 1.25), r * rng.uniform(0.75, 1.25)
            ext = max(rx, ry) * 1.45 + 1  # polygon radius bound (perturbation <= ~0.43)
            if cx1 - cx0 < 2 * ext or cy1 - cy0 < 2 * ext:
                continue
            cx = rng.uniform(cx0 + ext, cx1 - ext)
            cy = rng.uniform(cy0 + ext, cy1 - ext)
            lm = np.zeros((h, w), np.uint8)
            cv2.fillPoly(lm, [_lesion_polygon(rng, cx, cy, rx, ry)], 1)
            m = lm.astype(bool)
            box = bbox_of(m)
            if box is None or (box[0] < cx0 or box[1] < cy0 or box[2] > cx1 or box[3] > cy1):
                continue
            if (keep_out & m).any() or (lumen[m] > 0.35).mean() > 0.2:
                continue
            _paint_lesion(rng, img, m, box, morph, tint)
            union |= m
            keep_out |= cv2.dilate(lm, kernel).astype(bool)
            boxes.append(box)
            labels.append(ci + 1)
            morphs.append(morph)
            break
    return PlacedLesions(
        union,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        morphs,
    )


def _count_weights(max_lesions: int) -> np.ndarray:
    """Probabilities of 1..``max_lesions`` lesions in a frame that has any (geometric)."""
    w = np.array([0.7 * 0.3**i for i in range(max_lesions)], np.float64)
    return w / w.sum()


def _class_tint(ci: int, k: int) -> np.ndarray:
    """Per-channel colour factor of class ``ci`` of ``k`` (keeps classes separable)."""
    phase = 2 * np.pi * ci / k
    return (1 + 0.12 * np.cos(phase + np.array([0, 2.09, 4.19]))).astype(np.float32)
