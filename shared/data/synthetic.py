"""Seeded generator of endoscopy-like frames and of synthetic hospital sites.

EndoFed's embedded default data: everything (tests, the demo, simulations) runs without
real images. A frame is drawn in float32 RGB in four layers, each from the frame's own
:class:`numpy.random.Generator`, so the same generator state always gives the same
pixels:

1. **Tissue** -- pinkish-red mucosa (low-frequency colour noise, fine texture),
   folds (a dark shadow and a light crest along an arc), sometimes a dark lumen, and
   thin darker vessel-like curves.
2. **Lesions** -- 0..``max_lesions`` lesions of the morphologies in
   :data:`MORPHOLOGIES`: ``protruding`` (a shaded dome with a highlight), ``flat``
   (a subtle, low-contrast colour/texture change) and ``depressed`` (a darker or paler
   centre inside a lighter rim). Lesions lie inside the frame's *clinical box* and
   never touch each other, so each lesion is one 8-connected mask component and its
   box is exactly the box of its own mask.
3. **Optics** -- an instrument/tube entering from the edge of the field of view,
   specular highlights, vignetting, then the site's :class:`DeviceProfile` (channel
   gains, gamma, brightness, sharpness, sensor noise).
4. **Burnt-in overlays** -- a black background outside a circular or octagonal field
   of view, a black panel in the lower-left corner, and text lines (date, time,
   device name, settings) drawn with :func:`cv2.putText`.

Conventions:

* Boxes are ``float32`` XYXY in pixels, pixel-edge aligned: a region covering columns
  ``x0..x1`` has ``xmin = x0`` and ``xmax = x1 + 1`` (as
  :func:`shared.data.layouts._base.boxes_from_mask`).
* Overlay ground truth (``overlay_boxes`` / ``overlay_types``):

  - ``"border"``: the black background outside the field of view, as the full strips
    between each image edge and the field of view's bounding box (left and right
    strips span the full height, top and bottom strips span the field of view's
    width). These are what a crop must remove. The black corners that an octagon or a
    circle leaves *inside* its bounding box are not boxed (a crop cannot remove them
    without cutting tissue).
  - ``"text"``: the tight box of each text line (every drawn pixel is inside).
  - ``"box"``: the black panel in the lower-left corner.
  - ``"tube"``: the instrument's visible pixels (inside the field of view).

* ``clinical_box``: an axis-aligned rectangle inside the field of view that intersects
  no overlay box; every lesion lies inside it.

:func:`write_site` writes a Kvasir-SEG style folder (``images/``, ``masks/``,
``bboxes.json``, ``manifest.csv``) plus ``overlays.json``; :func:`write_sites` writes
``site_1 ... site_N`` with one device profile per site.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .sample import NORMAL_CLASS_NAME, image_label

log = logging.getLogger(__name__)

MORPHOLOGIES: tuple[str, ...] = ("protruding", "flat", "depressed")
OVERLAY_TYPES: tuple[str, ...] = ("border", "text", "box", "tube")
FOV_SHAPES: tuple[str, ...] = ("octagon", "circle")

# Mucosa base colour (RGB in [0, 1]) before patient tint and device profile.
_MUCOSA_RGB = np.array([0.86, 0.47, 0.40], np.float32)
_LUMEN_RGB = np.array([0.22, 0.09, 0.07], np.float32)
_VESSEL_GAIN = np.array([0.80, 0.55, 0.60], np.float32)


# ----------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class DeviceProfile:
    """Colour and layout signature of one endoscope vendor / processor.

    ``gain`` multiplies R, G, B; ``gamma`` is applied after gain (``> 1`` darkens);
    ``brightness`` is an additive offset in ``[0, 1]`` units; ``noise_sigma`` is the
    sensor noise standard deviation in ``[0, 1]`` units; ``sharpness`` ``> 0``
    sharpens (unsharp-mask amount) and ``< 0`` blurs (Gaussian sigma ``-sharpness``
    pixels at 256 px, scaled with the frame). The layout fields decide how the
    processor draws its overlays.
    """

    name: str = "generic"
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    brightness: float = 0.0
    noise_sigma: float = 0.01
    sharpness: float = 0.0
    fov_shape: str = "octagon"
    text_scale: float = 1.0
    box_probability: float = 0.35
    tube_probability: float = 0.15

    def __post_init__(self) -> None:
        if self.fov_shape not in FOV_SHAPES:
            raise ValueError(f"fov_shape must be one of {FOV_SHAPES}, got {self.fov_shape!r}")
        if len(self.gain) != 3 or min(self.gain) <= 0:
            raise ValueError(f"gain must be three positive floats, got {self.gain!r}")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be positive, got {self.gamma!r}")


# Vendor-like bases (fictional names); sites cycle through them, with a seeded jitter.
_VENDORS: tuple[DeviceProfile, ...] = (
    DeviceProfile("ENDO-VX 190", (1.04, 0.96, 0.92), 0.95, 0.01, 0.008, 0.4, "octagon",
                  1.0, 0.45, 0.15),
    DeviceProfile("LUMA HD-3", (0.94, 1.02, 1.10), 1.10, -0.02, 0.015, -0.6, "circle",
                  0.9, 0.20, 0.20),
    DeviceProfile("OPTIQ CV-7", (1.12, 0.88, 0.96), 1.00, 0.03, 0.012, 0.0, "octagon",
                  1.1, 0.30, 0.10),
    DeviceProfile("VISTA 4K", (0.98, 1.06, 0.90), 0.90, -0.01, 0.020, 0.8, "circle",
                  1.0, 0.35, 0.25),
)


def device_profile_for_site(site_index: int, seed: int = 0) -> DeviceProfile:
    """The device profile of site ``site_index`` (0-based): a vendor base plus jitter.

    Sites cycle through four vendor-like bases, so neighbouring sites always differ in
    colour; the jitter (seeded by ``seed`` and ``site_index``) makes sites that share
    a base differ too.
    """
    if site_index < 0:
        raise ValueError(f"site_index must be >= 0, got {site_index}")
    base = _VENDORS[site_index % len(_VENDORS)]
    rng = np.random.default_rng([int(seed), int(site_index), 0xDE71CE])
    gain = tuple(float(g * rng.uniform(0.96, 1.04)) for g in base.gain)
    return DeviceProfile(
        name=base.name,
        gain=gain,  # type: ignore[arg-type]
        gamma=float(base.gamma * rng.uniform(0.95, 1.05)),
        brightness=float(base.brightness + rng.uniform(-0.015, 0.015)),
        noise_sigma=float(base.noise_sigma * rng.uniform(0.8, 1.2)),
        sharpness=float(base.sharpness + rng.uniform(-0.1, 0.1)),
        fov_shape=base.fov_shape,
        text_scale=base.text_scale,
        box_probability=base.box_probability,
        tube_probability=base.tube_probability,
    )


# ----------------------------------------------------------------------------- lesions


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


# ----------------------------------------------------------------------------- frame


@dataclass
class SyntheticFrame:
    """One rendered frame and its exact ground truth (see the module docstring)."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    mask: np.ndarray  # bool (H, W), union of the lesion masks
    boxes: np.ndarray  # float32 (N, 4) XYXY, one per lesion
    labels: np.ndarray  # int64 (N,), 1..K
    morphologies: list[str]
    overlay_boxes: np.ndarray  # float32 (M, 4) XYXY
    overlay_types: list[str]
    clinical_box: np.ndarray  # float32 (4,) XYXY
    class_names: tuple[str, ...] = ("lesion",)

    @property
    def image_label(self) -> int:
        """Image-level class (label of the largest lesion, 0 when lesion-free)."""
        return image_label(self.boxes, self.labels)


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        h = w = size
    else:
        h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise ValueError(f"size must be at least 32x32, got {w}x{h}")
    return h, w


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, ch: int = 1):
    """Zero-mean, unit-ish low-frequency noise: a random grid upsampled bicubically."""
    gh, gw = max(2, round(h / cell)) + 1, max(2, round(w / cell)) + 1
    grid = rng.standard_normal((gh, gw, ch)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, ch) if ch > 1 else out.reshape(h, w)


def _rgb(m: np.ndarray) -> np.ndarray:
    """A one-channel float map repeated to three channels (for fast cv2 arithmetic)."""
    return cv2.merge([m, m, m])


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.2:
        return a
    return cv2.GaussianBlur(a, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)


def _bbox_of(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Pixel-edge XYXY box of a boolean mask, ``None`` when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _intersects(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@dataclass
class _Geometry:
    h: int
    w: int
    fov_mask: np.ndarray  # bool
    fov_box: tuple[int, int, int, int]
    inscribed: tuple[int, int, int, int]
    center: tuple[float, float]
    overlays: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)


def _field_of_view(rng: np.random.Generator, h: int, w: int, shape: str) -> _Geometry:
    """Draw the field of view: its mask, bounding box and an inscribed rectangle."""
    x0 = int(round(w * rng.uniform(0.10, 0.20)))
    x1 = w - int(round(w * rng.uniform(0.0, 0.05)))
    y0 = int(round(h * rng.uniform(0.0, 0.03)))
    y1 = h - int(round(h * rng.uniform(0.0, 0.03)))
    bw, bh = x1 - x0, y1 - y0
    fov = np.zeros((h, w), np.uint8)
    if shape == "octagon":
        c = int(round(min(bw, bh) * rng.uniform(0.15, 0.24)))
        pts = np.array(
            [[x0 + c, y0], [x1 - 1 - c, y0], [x1 - 1, y0 + c], [x1 - 1, y1 - 1 - c],
             [x1 - 1 - c, y1 - 1], [x0 + c, y1 - 1], [x0, y1 - 1 - c], [x0, y0 + c]],
            np.int32,
        )
        cv2.fillPoly(fov, [pts], 1)
        m = int(math.ceil(c / 2)) + 1
        inscribed = (x0 + m, y0 + m, x1 - m, y1 - m)
    else:  # circle, cut by the bounding box (as on most processors)
        cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        r = max(bw, bh) / 2 * rng.uniform(0.98, 1.08)
        cv2.circle(fov, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
        fov[:, :x0] = 0
        fov[:, x1:] = 0
        fov[:y0] = 0
        fov[y1:] = 0
        s = r / math.sqrt(2) - 1
        inscribed = (
            max(x0, int(math.ceil(cx - s))),
            max(y0, int(math.ceil(cy - s))),
            min(x1, int(math.floor(cx + s))),
            min(y1, int(math.floor(cy + s))),
        )
    # The mask may not reach the bounding box exactly (rounding): use its real extent.
    box = _bbox_of(fov.astype(bool)) or (x0, y0, x1, y1)
    return _Geometry(
        h=h, w=w, fov_mask=fov.astype(bool), fov_box=box, inscribed=inscribed,
        center=((box[0] + box[2]) / 2, (box[1] + box[3]) / 2),
    )


def _clinical_box(geo: _Geometry) -> tuple[int, int, int, int]:
    """Shrink the inscribed rectangle until it intersects no overlay box."""
    x0, y0, x1, y1 = geo.inscribed
    for _, ob in geo.overlays:
        if not _intersects((x0, y0, x1, y1), ob):
            continue
        options = [
            (ob[2], y0, x1, y1),  # move the left edge right of the overlay
            (x0, y0, ob[0], y1),  # move the right edge left of it
            (x0, ob[3], x1, y1),  # move the top edge below it
            (x0, y0, x1, ob[1]),  # move the bottom edge above it
        ]
        x0, y0, x1, y1 = max(options, key=lambda b: max(0, b[2] - b[0]) * max(0, b[3] - b[1]))
        if x1 <= x0 or y1 <= y0:
            return (x0, y0, x0, y0)
    return (x0, y0, x1, y1)


def _tissue(rng: np.random.Generator, geo: _Geometry, tint: np.ndarray):
    """Mucosa RGB float image, lumen darkness map (0..1) and vignetting gain map.

    The smooth parts (colour, folds, lumen, vignetting) are drawn at half resolution
    and upsampled; vessels and fine texture are drawn at full resolution.
    """
    h, w = geo.h, geo.w
    s = min(h, w)
    lh, lw = (h + 1) // 2, (w + 1) // 2
    ls = min(lh, lw)
    fx = lw / w
    base = _MUCOSA_RGB * tint * rng.uniform(0.92, 1.06, 3).astype(np.float32)
    low = _smooth_noise(rng, lh, lw, ls / 3, 3)
    shade = 1.0 + 0.05 * _smooth_noise(rng, lh, lw, ls / 12)
    patch = np.clip(_smooth_noise(rng, lh, lw, ls / 8) - 1.2, 0, None)

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
    shade -= 0.35 * np.clip(_blur(shadow, ls * 0.015), 0, 1)
    crest = 0.07 * np.clip(_blur(crest, ls * 0.02), 0, 1)

    # Lumen: a dark, blurred region inside the field of view.
    lumen = np.zeros((lh, lw), np.float32)
    if rng.random() < 0.5:
        fx0, fy0, fx1, fy1 = (v * fx for v in geo.fov_box)
        cx = int(rng.uniform(fx0 + 0.15 * (fx1 - fx0), fx1 - 0.15 * (fx1 - fx0)))
        cy = int(rng.uniform(fy0 + 0.15 * (fy1 - fy0), fy1 - 0.15 * (fy1 - fy0)))
        axes = (int(ls * rng.uniform(0.08, 0.2)), int(ls * rng.uniform(0.08, 0.2)))
        cv2.ellipse(lumen, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        lumen = np.clip(_blur(lumen, ls * 0.05), 0, 1)

    # Vignetting around the centre of the field of view.
    cx, cy = geo.center[0] * fx, geo.center[1] * fx
    xx = ((np.arange(lw, dtype=np.float32) - cx) ** 2)[None, :]
    yy = ((np.arange(lh, dtype=np.float32) - cy) ** 2)[:, None]
    rr = (xx + yy) / (0.25 * (lh * lh + lw * lw))
    vignette = 1 - rng.uniform(0.25, 0.55) * np.clip(rr, 0, 1.5)

    shade += 0.10 * _smooth_noise(rng, lh, lw, ls / 3)
    img = base * (1.0 + 0.035 * low) * shade[..., None]
    img += patch[..., None] * np.array([0.05, 0.10, 0.04], np.float32) + crest[..., None]
    lm = (0.9 * lumen)[..., None]
    img = img * (1 - lm) + _LUMEN_RGB * lm
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    lumen = cv2.resize(lumen, (w, h), interpolation=cv2.INTER_LINEAR)
    vignette = cv2.resize(vignette, (w, h), interpolation=cv2.INTER_LINEAR)

    # Full resolution: fine texture (one channel) and vessels (smooth random walks).
    detail = 1.0 + 0.025 * _smooth_noise(rng, h, w, max(2.0, s / 64))
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
    vessels = np.clip(_blur(vessels, s * 0.002), 0, 1)
    # Vessel darkening per channel: 1 - v * (1 - gain_c), as one affine colour transform.
    vmat = np.array([[-(1 - g), 1.0] for g in _VESSEL_GAIN], np.float32)
    factor = cv2.transform(vessels[..., None], vmat)
    img = cv2.multiply(cv2.multiply(img, _rgb(detail.astype(np.float32))), factor)
    return img, lumen, vignette


def _lesion_polygon(rng, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
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
    box: tuple[int, int, int, int],
    morphology: str,
    tint: np.ndarray,
) -> None:
    """Paint one lesion in place, only on the pixels of ``mask`` (within ``box``)."""
    x0, y0, x1, y1 = box
    m = mask[y0:y1, x0:x1]
    mu8 = np.pad(m.astype(np.uint8), 1)
    d = cv2.distanceTransform(mu8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    radius = float(d.max())
    dn = _blur(d / max(radius, 1e-6), radius * 0.15) * m
    patch = img[y0:y1, x0:x1]
    hh, ww = m.shape
    tex = _smooth_noise(rng, hh, ww, max(2.0, radius / 3))
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


def _place_lesions(
    rng: np.random.Generator,
    img: np.ndarray,
    geo: _Geometry,
    clinical: tuple[int, int, int, int],
    lumen: np.ndarray,
    cfg: LesionConfig,
):
    h, w = geo.h, geo.w
    s = min(h, w)
    union = np.zeros((h, w), bool)
    keep_out = np.zeros((h, w), bool)  # dilated lesions: keep a gap between lesions
    boxes, labels, morphs = [], [], []
    n = 0 if rng.random() < cfg.empty_fraction else int(
        rng.choice(np.arange(1, cfg.max_lesions + 1), p=_count_weights(cfg.max_lesions))
    )
    cx0, cy0, cx1, cy1 = clinical
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
            box = _bbox_of(m)
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
    return (
        union,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        morphs,
    )


def _count_weights(max_lesions: int) -> np.ndarray:
    w = np.array([0.7 * 0.3**i for i in range(max_lesions)], np.float64)
    return w / w.sum()


def _class_tint(ci: int, k: int) -> np.ndarray:
    phase = 2 * np.pi * ci / k
    return (1 + 0.12 * np.cos(phase + np.array([0, 2.09, 4.19]))).astype(np.float32)


def _tube(rng: np.random.Generator, img: np.ndarray, geo: _Geometry):
    """Draw an instrument entering from the right or bottom edge; return its box."""
    h, w = geo.h, geo.w
    s = min(h, w)
    fx0, fy0, fx1, fy1 = geo.fov_box
    width = s * rng.uniform(0.06, 0.11)
    length = s * rng.uniform(0.2, 0.38)
    if rng.random() < 0.5:  # from the right edge, pointing left (and a little up/down)
        start = np.array([fx1 + width, rng.uniform(fy0 + 0.55 * (fy1 - fy0), fy1 - width)])
        ang = math.pi + rng.uniform(-0.5, 0.3)
    else:  # from the bottom edge, pointing up-left
        start = np.array([rng.uniform(fx0 + 0.55 * (fx1 - fx0), fx1 - width), fy1 + width])
        ang = -math.pi / 2 + rng.uniform(-0.6, 0.0)
    d = np.array([math.cos(ang), math.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    tip = start + d * (length + width)
    quad = np.array(
        [start + nrm * width / 2, tip + nrm * width / 2, tip - nrm * width / 2,
         start - nrm * width / 2],
    )
    tm = np.zeros((h, w), np.uint8)
    cv2.fillPoly(tm, [np.round(quad).astype(np.int32)], 1)
    cv2.circle(tm, tuple(int(v) for v in np.round(tip)), int(width / 2), 1, -1)
    m = tm.astype(bool) & geo.fov_mask
    box = _bbox_of(m)
    if box is None:
        return None
    # Cylinder shading across the tube: signed distance to its axis.
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    across = ((xx - start[0]) * nrm[0] + (yy - start[1]) * nrm[1]) / (width / 2)
    shade = np.clip(1 - 0.45 * across**2, 0.4, 1) + 0.35 * np.exp(-((across + 0.35) / 0.15) ** 2)
    base = np.array([0.58, 0.62, 0.66], np.float32) * rng.uniform(0.85, 1.1)
    sub = m[y0:y1, x0:x1]
    img[y0:y1, x0:x1][sub] = np.clip(base * shade[sub][:, None], 0, 1)
    return box


def _highlights(rng: np.random.Generator, img: np.ndarray, geo: _Geometry) -> None:
    """Small saturated white specular blobs inside the field of view."""
    h, w = geo.h, geo.w
    s = min(h, w)
    hl = np.zeros((h, w), np.float32)
    fx0, fy0, fx1, fy1 = geo.fov_box
    for _ in range(int(rng.integers(4, 30))):
        c = (int(rng.uniform(fx0, fx1)), int(rng.uniform(fy0, fy1)))
        axes = (
            max(1, int(s * rng.uniform(0.003, 0.02))),
            max(1, int(s * rng.uniform(0.002, 0.01))),
        )
        cv2.ellipse(hl, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    hl = _rgb(np.clip(_blur(hl, s * 0.002), 0, 1))
    img[:] = cv2.add(cv2.multiply(img, 1 - hl), hl)


def apply_device(rng: np.random.Generator, img: np.ndarray, p: DeviceProfile) -> np.ndarray:
    """Apply an endoscope vendor profile (gain, brightness, gamma, blur/sharpen, noise) to a
    float RGB image in [0, 1]."""
    s = min(img.shape[:2])
    affine = np.concatenate([np.diag(p.gain), np.full((3, 1), p.brightness)], 1)
    out = np.clip(cv2.transform(img, affine.astype(np.float32)), 0, 1)
    out = cv2.pow(out, float(p.gamma))
    if p.sharpness < 0:
        out = _blur(out, -p.sharpness * s / 256)
    elif p.sharpness > 0:
        out = out + p.sharpness * (out - _blur(out, max(0.8, s / 256)))
    # Sensor noise (luminance).
    noise = rng.standard_normal(out.shape[:2], dtype=np.float32) * np.float32(p.noise_sigma)
    return np.clip(cv2.add(out, _rgb(noise)), 0, 1)


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_lines(rng: np.random.Generator, p: DeviceProfile) -> tuple[list[str], list[str]]:
    day, month, year = (int(v) for v in rng.integers((1, 1, 2008), (29, 13, 2024)))
    hh, mm, ss = (int(v) for v in rng.integers(0, (24, 60, 60)))
    left = [
        f"{day:02d}/{month:02d}/{year}",
        f"{hh:02d}:{mm:02d}:{ss:02d}",
        f"CVP:{int(rng.integers(1, 9))}",
        rng.choice(["Q:N", "Q:H", "Ef:B4", "IR:1"]),
    ]
    if rng.random() < 0.5:
        left.insert(0, p.name.split()[0])
    mins, secs, a = (int(v) for v in rng.integers((0, 0, 1), (99, 60, 9)))
    right = [f"{mins:02d}:{secs:02d}", f"A{a}"]
    return left, right[: int(rng.integers(0, 3))]


@dataclass
class _TextLine:
    text: str
    org: tuple[int, int]
    scale: float
    thickness: int
    colour: float
    box: tuple[int, int, int, int]


def _layout_text(rng: np.random.Generator, geo: _Geometry, p: DeviceProfile) -> list[_TextLine]:
    """Place text lines at the top-left and, sometimes, the right side; tight boxes."""
    h, w = geo.h, geo.w
    s = min(h, w)
    target = max(5.0, s * 0.028 * p.text_scale)  # glyph height in px
    (_, th0), _ = cv2.getTextSize("0", _FONT, 1.0, 1)
    scale = target / th0
    thick = 1 if s < 600 else 2
    colour = float(rng.uniform(0.85, 1.0))
    left, right = _text_lines(rng, p)
    step = int(round(target * 1.9))
    x = max(1, int(round(w * 0.01)))
    y = int(round(h * rng.uniform(0.08, 0.14)))
    placements = [(x, y + i * step, t) for i, t in enumerate(left)]
    if right:
        y_r = int(round(h * rng.uniform(0.06, 0.1)))
        for i, t in enumerate(right):
            (tw, _), _ = cv2.getTextSize(t, _FONT, scale, thick)
            placements.append((w - tw - max(2, int(w * 0.015)), y_r + i * step, t))
    lines = []
    for tx, ty, t in placements:
        layer = np.zeros((h, w), np.uint8)
        cv2.putText(layer, t, (tx, ty), _FONT, scale, 255, thick, cv2.LINE_AA)
        box = _bbox_of(layer > 0)
        if box is not None:
            lines.append(_TextLine(t, (tx, ty), scale, thick, colour, box))
    return lines


def _draw_text(img: np.ndarray, lines: Sequence[_TextLine]) -> None:
    """Burn the text lines into ``img`` (float RGB, in place), anti-aliased."""
    for ln in lines:
        layer = np.zeros(img.shape[:2], np.uint8)
        cv2.putText(layer, ln.text, ln.org, _FONT, ln.scale, 255, ln.thickness, cv2.LINE_AA)
        x0, y0, x1, y1 = ln.box
        a = (layer[y0:y1, x0:x1].astype(np.float32) / 255)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + ln.colour * a


def render_frame(
    rng: np.random.Generator,
    *,
    size: int | tuple[int, int] = (256, 256),
    profile: DeviceProfile | None = None,
    lesions: LesionConfig | None = None,
    overlays: bool = True,
    tissue_tint: Sequence[float] | None = None,
) -> SyntheticFrame:
    """Render one endoscopy-like frame and its exact ground truth.

    Args:
        rng: the frame's random generator (the only source of randomness).
        size: ``(H, W)`` or a single side.
        profile: the device profile (default: :func:`device_profile_for_site` ``(0)``).
        lesions: which lesions to draw (default: one class ``"lesion"``, all
            morphologies, 25 % lesion-free frames).
        overlays: ``False`` draws a clean frame: the field of view fills the image and
            there is no text, panel or tube (like an already cropped frame).
        tissue_tint: per-channel factor on the mucosa colour (e.g. per patient).
    """
    h, w = _as_hw(size)
    profile = profile or device_profile_for_site(0)
    cfg = lesions or LesionConfig()
    tint = np.asarray(tissue_tint if tissue_tint is not None else (1, 1, 1), np.float32)

    if overlays:
        geo = _field_of_view(rng, h, w, profile.fov_shape)
    else:
        geo = _Geometry(h, w, np.ones((h, w), bool), (0, 0, w, h), (0, 0, w, h), (w / 2, h / 2))
    img, lumen, vignette = _tissue(rng, geo, tint)

    # Decide the overlays first so that the clinical box avoids them.
    if overlays:
        fx0, fy0, fx1, fy1 = geo.fov_box
        for b in ((0, 0, fx0, h), (fx1, 0, w, h), (fx0, 0, fx1, fy0), (fx0, fy1, fx1, h)):
            if b[2] > b[0] and b[3] > b[1]:
                geo.overlays.append(("border", b))
        if rng.random() < profile.box_probability:
            bw = int(round(w * rng.uniform(0.2, 0.3)))
            bh = int(round(h * rng.uniform(0.22, 0.34)))
            geo.overlays.append(("box", (0, h - bh, bw, h)))
        text = _layout_text(rng, geo, profile)
        geo.overlays.extend(("text", ln.box) for ln in text)
        tube_box = None
        if rng.random() < profile.tube_probability:
            tube_box = _tube(rng, img, geo)
            if tube_box is not None:
                geo.overlays.append(("tube", tube_box))
    clinical = _clinical_box(geo)

    mask, boxes, labels, morphs = _place_lesions(rng, img, geo, clinical, lumen, cfg)
    _highlights(rng, img, geo)

    img = cv2.multiply(img, _rgb(vignette))

    img = apply_device(rng, img, profile)
    if overlays:
        # Black background (with a little noise) outside the field of view and in the panel.
        dark = _rgb(rng.random((h, w), dtype=np.float32) * np.float32(0.012))
        img = cv2.copyTo(img, geo.fov_mask.astype(np.uint8), dark.copy())
        for kind, (x0, y0, x1, y1) in geo.overlays:
            if kind == "box":
                img[y0:y1, x0:x1] = dark[y0:y1, x0:x1]
        _draw_text(img, text)

    image = cv2.convertScaleAbs(np.clip(img, 0, 1), alpha=255.0)  # rounds, saturates
    ob = [b for _, b in geo.overlays]
    return SyntheticFrame(
        image=image,
        mask=mask,
        boxes=boxes,
        labels=labels,
        morphologies=morphs,
        overlay_boxes=np.asarray(ob, np.float32).reshape(-1, 4),
        overlay_types=[k for k, _ in geo.overlays],
        clinical_box=np.asarray(clinical, np.float32),
        class_names=tuple(cfg.class_names),
    )


# ----------------------------------------------------------------------------- sites


@dataclass
class SiteSummary:
    """What :func:`write_site` wrote."""

    root: Path
    site_index: int
    n_images: int
    n_lesions: int
    n_lesion_free: int
    n_patients: int
    profile: DeviceProfile
    class_names: tuple[str, ...]


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    path.write_bytes(buf.tobytes())


def _write_jpg(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    path.write_bytes(buf.tobytes())


_IMAGE_WRITERS: dict[str, Callable[[Path, np.ndarray], None]] = {
    "png": _write_png,
    "jpg": _write_jpg,
}


def _kvasir_layout(root: Path, frames: list[tuple[str, str, SyntheticFrame]], fmt: str) -> None:
    """``images/``, ``masks/`` (PNG, 0/255), ``bboxes.json``, ``manifest.csv``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    write_image = _IMAGE_WRITERS[fmt]
    bboxes: dict[str, dict] = {}
    rows = []
    for stem, patient, f in frames:
        img_rel = f"images/{stem}.{fmt}"
        mask_rel = f"masks/{stem}.png"
        write_image(root / img_rel, cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
        _write_png(root / mask_rel, f.mask.astype(np.uint8) * 255)
        h, w = f.mask.shape
        bboxes[stem] = {
            "height": h,
            "width": w,
            "bbox": [
                {
                    "label": f.class_names[int(lab) - 1],
                    "morphology": morph,
                    "xmin": int(b[0]), "ymin": int(b[1]), "xmax": int(b[2]), "ymax": int(b[3]),
                }
                for b, lab, morph in zip(f.boxes, f.labels, f.morphologies)
            ],
        }
        # Image-level label and morphology: those of the largest lesion.
        lab = f.image_label
        if lab == 0:
            label, morph = NORMAL_CLASS_NAME, ""
        else:
            areas = (f.boxes[:, 2] - f.boxes[:, 0]) * (f.boxes[:, 3] - f.boxes[:, 1])
            i = int(np.argmax(areas))
            label, morph = f.class_names[lab - 1], f.morphologies[i]
        rows.append([img_rel, mask_rel, label, morph, patient])
    with open(root / "bboxes.json", "w", encoding="utf-8") as fh:
        json.dump(bboxes, fh, indent=1, sort_keys=True)
    with open(root / "manifest.csv", "w", encoding="utf-8", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(["image", "mask", "label", "morphology", "patient_id"])
        wr.writerows(rows)


#: layout name -> writer of ``(root, [(stem, patient_id, frame)], image_format)``.
SITE_LAYOUTS: dict[str, Callable[[Path, list[tuple[str, str, SyntheticFrame]], str], None]] = {
    "kvasir": _kvasir_layout,
}


def write_site(
    out_dir: Path | str,
    *,
    n_images: int,
    seed: int,
    site_index: int = 0,
    size: int | tuple[int, int] = (256, 256),
    layout: str = "kvasir",
    lesions: LesionConfig | None = None,
    profile: DeviceProfile | None = None,
    image_format: str = "png",
    max_frames_per_patient: int = 4,
) -> SiteSummary:
    """Write one synthetic hospital to ``out_dir`` (deterministic: same args, same bytes).

    Files (``layout="kvasir"``): ``images/<stem>.png``, ``masks/<stem>.png`` (0/255),
    ``bboxes.json`` (``{stem: {height, width, bbox: [{label, morphology, xmin, ymin,
    xmax, ymax}]}}``, an empty ``bbox`` list for lesion-free frames), ``manifest.csv``
    (``image, mask, label, morphology, patient_id``; ``label`` is the image-level class,
    ``"normal"`` without lesion; ``morphology`` that of the largest lesion),
    ``overlays.json`` (``{stem: [{type, xmin, ymin, xmax, ymax}]}``, see the module
    docstring) and ``synthetic.json`` (generator settings and device profile).

    Consecutive frames are grouped into patients of 1..``max_frames_per_patient``
    frames sharing a tissue tint. Frame ``i`` only depends on ``(seed, site_index, i)``
    and its patient, so a larger ``n_images`` extends a site without changing it.
    """
    if layout not in SITE_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(SITE_LAYOUTS)}")
    if image_format not in _IMAGE_WRITERS:
        raise ValueError(
            f"unknown image_format {image_format!r}; expected one of {sorted(_IMAGE_WRITERS)}"
        )
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    profile = profile or device_profile_for_site(site_index, seed)
    cfg = lesions or LesionConfig()
    hw = _as_hw(size)

    patient_rng = np.random.default_rng([int(seed), int(site_index), 0x9A71E7])
    frames: list[tuple[str, str, SyntheticFrame]] = []
    patient, left, tint = -1, 0, np.ones(3)
    for i in range(n_images):
        if left == 0:
            patient += 1
            left = int(patient_rng.integers(1, max_frames_per_patient + 1))
            tint = patient_rng.uniform(0.93, 1.07, 3)
        left -= 1
        rng = np.random.default_rng([int(seed), int(site_index), i])
        frame = render_frame(rng, size=hw, profile=profile, lesions=cfg, tissue_tint=tint)
        stem = f"s{site_index + 1:02d}_{i:05d}"
        frames.append((stem, f"s{site_index + 1:02d}-p{patient:04d}", frame))

    SITE_LAYOUTS[layout](root, frames, image_format)
    overlays = {
        stem: [
            {"type": t, "xmin": int(b[0]), "ymin": int(b[1]), "xmax": int(b[2]), "ymax": int(b[3])}
            for b, t in zip(f.overlay_boxes, f.overlay_types)
        ]
        for stem, _, f in frames
    }
    with open(root / "overlays.json", "w", encoding="utf-8") as fh:
        json.dump(overlays, fh, indent=1, sort_keys=True)
    summary = SiteSummary(
        root=root,
        site_index=site_index,
        n_images=n_images,
        n_lesions=sum(len(f.labels) for _, _, f in frames),
        n_lesion_free=sum(len(f.labels) == 0 for _, _, f in frames),
        n_patients=patient + 1,
        profile=profile,
        class_names=tuple(cfg.class_names),
    )
    info = {
        "generator": "endofed.synthetic",
        "seed": int(seed),
        "site_index": int(site_index),
        "size": list(hw),
        "layout": layout,
        "image_format": image_format,
        "class_names": list(cfg.class_names),
        "n_images": n_images,
        "n_lesions": summary.n_lesions,
        "n_lesion_free": summary.n_lesion_free,
        "n_patients": summary.n_patients,
        "device_profile": asdict(profile),
    }
    with open(root / "synthetic.json", "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=1, sort_keys=True)
    log.info(
        "%s: %d synthetic images (%d lesions, %d lesion-free, %d patients), device %s",
        root, n_images, summary.n_lesions, summary.n_lesion_free, summary.n_patients,
        profile.name,
    )
    return summary


def write_sites(
    out: Path | str,
    *,
    sites: int,
    images_per_site: int,
    seed: int,
    size: int | tuple[int, int] = (256, 256),
    layout: str = "kvasir",
    lesions: LesionConfig | None = None,
    image_format: str = "png",
) -> list[SiteSummary]:
    """Write ``out/site_1 ... out/site_N``, each with its own device profile."""
    if sites < 1:
        raise ValueError(f"sites must be >= 1, got {sites}")
    return [
        write_site(
            Path(out) / f"site_{k + 1}",
            n_images=images_per_site,
            seed=seed,
            site_index=k,
            size=size,
            layout=layout,
            lesions=lesions,
            image_format=image_format,
        )
        for k in range(sites)
    ]
