"""The field of view (the lit octagon or circle), its black border strips, the clinical box."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from endofed.shared.data.synthetic.overlay_style import OverlayStyle, draw_range
from endofed.shared.data.synthetic.raster import Box, bbox_of, boxes_intersect


@dataclass(frozen=True)
class FieldOfView:
    """Where the optics light the sensor.

    ``mask`` (bool HxW) is the field of view, ``box`` its pixel-edge bounding box,
    ``inscribed`` an axis-aligned rectangle inside it and ``center`` the centre of
    ``box`` (the optical centre, for vignetting).
    """

    height: int
    width: int
    mask: np.ndarray
    box: Box
    inscribed: Box
    center: tuple[float, float]

    @classmethod
    def full_frame(cls, height: int, width: int) -> FieldOfView:
        """A field of view filling the frame (an already cropped frame)."""
        frame = (0, 0, width, height)
        return cls(height, width, np.ones((height, width), bool), frame, frame,
                   (width / 2, height / 2))

    def border_strips(self) -> list[Box]:
        """The black strips between each image edge and :attr:`box` (left and right ones
        full height, top and bottom ones as wide as the box); empty strips left out."""
        h, w = self.height, self.width
        fx0, fy0, fx1, fy1 = self.box
        strips = ((0, 0, fx0, h), (fx1, 0, w, h), (fx0, 0, fx1, fy0), (fx0, fy1, fx1, h))
        return [b for b in strips if b[2] > b[0] and b[3] > b[1]]


def draw_field_of_view(
    rng: np.random.Generator, height: int, width: int, style: OverlayStyle
) -> FieldOfView:
    """Draw a field of view of one of ``style.fov_shapes``: mask, box, inscribed rectangle."""
    h, w = height, width
    shapes = style.fov_shapes
    shape = shapes[0] if len(shapes) == 1 else shapes[int(rng.integers(len(shapes)))]
    x0 = int(round(w * draw_range(rng, style.fov_left)))
    x1 = w - int(round(w * draw_range(rng, style.fov_right)))
    y0 = int(round(h * draw_range(rng, style.fov_vertical)))
    y1 = h - int(round(h * draw_range(rng, style.fov_vertical)))
    bw, bh = x1 - x0, y1 - y0
    fov = np.zeros((h, w), np.uint8)
    if shape == "octagon":
        c = int(round(min(bw, bh) * draw_range(rng, style.octagon_cut)))
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
        r = max(bw, bh) / 2 * draw_range(rng, style.circle_radius)
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
    mask = fov.astype(bool)
    box = bbox_of(mask) or (x0, y0, x1, y1)
    return FieldOfView(h, w, mask, box, inscribed, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))


def clinical_box(fov: FieldOfView, overlay_boxes: Iterable[Box]) -> Box:
    """Shrink ``fov.inscribed`` until it intersects none of ``overlay_boxes``.

    Each overlay in turn moves the one edge that keeps the largest area; an empty
    result is the degenerate box at the remaining top-left corner.
    """
    x0, y0, x1, y1 = fov.inscribed
    for ob in overlay_boxes:
        if not boxes_intersect((x0, y0, x1, y1), ob):
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
