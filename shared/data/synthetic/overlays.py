"""The overlay renderer: black border, corner panel, burnt-in text and instrument, with exact boxes.

One renderer serves the synthetic frame generator and the learned overlay detector's
training composites. It works in two steps so that a frame generator can put the
optics between them:

1. :func:`place_overlays` decides every overlay (panel, text lines, instrument) and
   draws the instrument, which is a scene object seen through the optics;
2. :func:`burn_in_overlays` blacks out everything outside the field of view and the
   panel and draws the text, as the video processor does after the optics.

:func:`composite_overlays` runs both on an overlay-free image. Overlay ground truth
(``types`` / ``boxes``, pixel-edge XYXY):

* ``"border"``: the strips between each image edge and the field of view's bounding
  box (:meth:`FieldOfView.border_strips`). The black corners an octagon or a circle
  leaves inside its box are not boxed (a crop cannot remove them without cutting
  tissue);
* ``"box"``: the black panel in the lower-left corner;
* ``"text"``: the tight box of each text line (every drawn pixel is inside);
* ``"tube"``: the instrument's visible pixels (inside the field of view).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from endofed.shared.data.synthetic.field_of_view import FieldOfView, draw_field_of_view
from endofed.shared.data.synthetic.overlay_style import OverlayStyle, draw_range
from endofed.shared.data.synthetic.raster import Box, as_rgb, bbox_of

#: Overlay types, in label order (label ``i + 1`` is ``OVERLAY_TYPES[i]``).
OVERLAY_TYPES: tuple[str, ...] = ("border", "text", "box", "tube")

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class TextLine:
    """One burnt-in text line: what :func:`cv2.putText` draws and the line's tight box."""

    text: str
    origin: tuple[int, int]
    scale: float
    thickness: int
    level: float  # grey level in [0, 1]
    box: Box


@dataclass(frozen=True)
class OverlayPlan:
    """Every overlay of one frame, decided: what :func:`burn_in_overlays` draws.

    ``labelled`` lists ``(type, box)`` in drawing order: border strips, panel, text
    lines, instrument. ``panel_graphics`` is the grey level of the scope diagram in the
    panel (``None``: no diagram).
    """

    fov: FieldOfView
    panel: Box | None
    panel_graphics: float | None
    text: tuple[TextLine, ...]
    labelled: tuple[tuple[str, Box], ...]

    @property
    def boxes(self) -> list[Box]:
        return [b for _, b in self.labelled]

    @property
    def types(self) -> list[str]:
        return [t for t, _ in self.labelled]


def _text_lines(
    rng: np.random.Generator, device_names: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """Left column (date, time, settings, sometimes the device) and 0-2 right lines."""
    day, month, year = (int(v) for v in rng.integers((1, 1, 2008), (29, 13, 2024)))
    hh, mm, ss = (int(v) for v in rng.integers(0, (24, 60, 60)))
    left = [
        f"{day:02d}/{month:02d}/{year}",
        f"{hh:02d}:{mm:02d}:{ss:02d}",
        f"CVP:{int(rng.integers(1, 9))}",
        rng.choice(["Q:N", "Q:H", "Ef:B4", "IR:1"]),
    ]
    if rng.random() < 0.5:
        k = 0 if len(device_names) == 1 else int(rng.integers(len(device_names)))
        left.insert(0, device_names[k].split()[0])
    mins, secs, a = (int(v) for v in rng.integers((0, 0, 1), (99, 60, 9)))
    right = [f"{mins:02d}:{secs:02d}", f"A{a}"]
    return left, right[: int(rng.integers(0, 3))]


def layout_text(
    rng: np.random.Generator, height: int, width: int, style: OverlayStyle
) -> list[TextLine]:
    """Place text lines at the top-left and, sometimes, the top-right; tight boxes."""
    h, w = height, width
    s = min(h, w)
    target = max(5.0, s * draw_range(rng, style.text_height) * style.text_scale)  # glyph px
    (_, th0), _ = cv2.getTextSize("0", _FONT, 1.0, 1)
    scale = target / th0
    if style.text_stroke > 0:
        thick = max(1, int(round(target * style.text_stroke)))
    else:
        thick = 1 if s < 600 else 2
    level = float(draw_range(rng, style.text_level))
    left, right = _text_lines(rng, style.device_names)
    step = int(round(target * draw_range(rng, style.text_spacing)))
    x = max(1, int(round(w * draw_range(rng, style.text_left))))
    y = int(round(h * draw_range(rng, style.text_top)))
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
        box = bbox_of(layer > 0)
        if box is not None:
            lines.append(TextLine(t, (tx, ty), scale, thick, level, box))
    return lines


def draw_text(image: np.ndarray, lines: Sequence[TextLine]) -> None:
    """Burn text lines into ``image`` (float RGB, in place), anti-aliased."""
    for ln in lines:
        layer = np.zeros(image.shape[:2], np.uint8)
        cv2.putText(layer, ln.text, ln.origin, _FONT, ln.scale, 255, ln.thickness, cv2.LINE_AA)
        x0, y0, x1, y1 = ln.box
        a = (layer[y0:y1, x0:x1].astype(np.float32) / 255)[..., None]
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - a) + ln.level * a


def draw_tube(
    rng: np.random.Generator, image: np.ndarray, fov: FieldOfView, style: OverlayStyle
) -> Box | None:
    """Draw an instrument entering from the right or bottom edge of the field of view
    into ``image`` (float RGB, in place); its visible box, ``None`` when it is not seen."""
    h, w = fov.height, fov.width
    s = min(h, w)
    fx0, fy0, fx1, fy1 = fov.box
    width = s * draw_range(rng, style.tube_width)
    length = s * draw_range(rng, style.tube_length)
    entry = style.tube_entry
    if rng.random() < 0.5:  # from the right edge, pointing left (and a little up/down)
        start = np.array([fx1 + width, rng.uniform(fy0 + entry * (fy1 - fy0), fy1 - width)])
        ang = math.pi + rng.uniform(-0.5, 0.3)
    else:  # from the bottom edge, pointing up-left
        start = np.array([rng.uniform(fx0 + entry * (fx1 - fx0), fx1 - width), fy1 + width])
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
    m = tm.astype(bool) & fov.mask
    box = bbox_of(m)
    if box is None:
        return None
    # Cylinder shading across the tube: signed distance to its axis.
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    across = ((xx - start[0]) * nrm[0] + (yy - start[1]) * nrm[1]) / (width / 2)
    shade = np.clip(1 - 0.45 * across**2, 0.4, 1) + 0.35 * np.exp(-((across + 0.35) / 0.15) ** 2)
    base = np.array(style.tube_colour, np.float32) * draw_range(rng, style.tube_brightness)
    sub = m[y0:y1, x0:x1]
    image[y0:y1, x0:x1][sub] = np.clip(base * shade[sub][:, None], 0, 1)
    return box


def place_overlays(
    rng: np.random.Generator, image: np.ndarray, fov: FieldOfView, style: OverlayStyle
) -> OverlayPlan:
    """Decide the overlays of a frame and draw its instrument into ``image`` (in place).

    Border strips thinner than ``style.min_border`` and instruments smaller than
    ``style.min_tube`` are drawn but not labelled.
    """
    h, w = fov.height, fov.width
    s = min(h, w)
    min_strip = max(1, int(round(style.min_border * s)))
    labelled = [("border", b) for b in fov.border_strips()
                if min(b[2] - b[0], b[3] - b[1]) >= min_strip]
    panel = graphics = None
    if rng.random() < style.panel_probability:
        bw = int(round(w * draw_range(rng, style.panel_width)))
        bh = int(round(h * draw_range(rng, style.panel_height)))
        panel = (0, h - bh, bw, h)
        labelled.append(("box", panel))
        p = style.panel_graphics_probability
        if p > 0 and rng.random() < p:
            graphics = int(rng.integers(80, 200)) / 255
    text = layout_text(rng, h, w, style)
    labelled.extend(("text", ln.box) for ln in text)
    if rng.random() < style.tube_probability:
        tube = draw_tube(rng, image, fov, style)
        min_area = (style.min_tube * s) ** 2
        if tube is not None and (tube[2] - tube[0]) * (tube[3] - tube[1]) >= min_area:
            labelled.append(("tube", tube))
    return OverlayPlan(fov, panel, graphics, tuple(text), tuple(labelled))


def burn_in_overlays(rng: np.random.Generator, image: np.ndarray, plan: OverlayPlan) -> np.ndarray:
    """``image`` (float RGB) with near-black noise outside the field of view and in the
    panel, the panel's diagram and the text lines drawn."""
    h, w = image.shape[:2]
    dark = as_rgb(rng.random((h, w), dtype=np.float32) * np.float32(0.012))
    out = cv2.copyTo(image, plan.fov.mask.astype(np.uint8), dark.copy())
    if plan.panel is not None:
        x0, y0, x1, y1 = plan.panel
        out[y0:y1, x0:x1] = dark[y0:y1, x0:x1]
        if plan.panel_graphics is not None:  # a scope diagram: a thin grey ring
            g = plan.panel_graphics
            bw, bh = x1 - x0, y1 - y0
            centre = (x0 + bw // 2, y1 - bh // 2)
            cv2.circle(out, centre, max(2, bh // 5), (g, g, g), 1, cv2.LINE_AA)
    draw_text(out, plan.text)
    return out


@dataclass
class Composite:
    """An image with overlays burnt in: ``image`` (uint8 RGB), ``boxes`` (float32
    (N, 4) XYXY) and ``types`` of the labelled overlays, and ``overlay_mask`` (bool,
    the black border and panel pixels)."""

    image: np.ndarray
    boxes: np.ndarray
    types: list[str]
    overlay_mask: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """1-based indices into :data:`OVERLAY_TYPES`."""
        return np.array([OVERLAY_TYPES.index(t) + 1 for t in self.types], np.int64)


def composite_overlays(
    rng: np.random.Generator, background: np.ndarray, *, style: OverlayStyle
) -> Composite:
    """Draw a field of view, panel, text and instrument of ``style`` onto an
    overlay-free ``background`` (uint8 RGB); every overlay's exact box and type."""
    h, w = background.shape[:2]
    image = background.astype(np.float32) / np.float32(255)
    fov = draw_field_of_view(rng, h, w, style)
    plan = place_overlays(rng, image, fov, style)
    image = burn_in_overlays(rng, image, plan)
    overlay_mask = ~fov.mask
    if plan.panel is not None:
        x0, y0, x1, y1 = plan.panel
        overlay_mask[y0:y1, x0:x1] = True
    return Composite(
        image=cv2.convertScaleAbs(np.clip(image, 0, 1), alpha=255.0),
        boxes=np.asarray(plan.boxes, np.float32).reshape(-1, 4),
        types=plan.types,
        overlay_mask=overlay_mask,
    )
