"""How a video processor burns overlays into its frames: the overlay renderer's parameters.

One :class:`OverlayStyle` drives every overlay the renderer draws (field of view and
black border, corner panel, text lines, instrument). Synthetic sites take theirs from
the site's :class:`~endofed.shared.data.synthetic.devices.DeviceProfile`; the learned
overlay detector trains on a wider style.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Shapes of the field of view (the part of the sensor the optics light).
FOV_SHAPES: tuple[str, ...] = ("octagon", "circle")

#: A ``(lo, hi)`` range drawn uniformly per frame.
Range = tuple[float, float]


def draw_range(rng: np.random.Generator, value: Range) -> float:
    """A uniform draw from ``value = (lo, hi)``; a fixed value (``lo == hi``) draws nothing.

    Fixing a parameter therefore leaves every other draw of the frame unchanged.
    """
    lo, hi = value
    return lo if lo == hi else rng.uniform(lo, hi)


@dataclass(frozen=True)
class OverlayStyle:
    """Parameters of the overlays of one processor (defaults: the synthetic sites').

    Lengths are shares of the frame: ``fov_*`` of its width (left, right) or height
    (top and bottom), ``panel_*`` of width and height, ``text_height`` / ``tube_*`` /
    ``min_*`` of its shorter side. ``(lo, hi)`` ranges are drawn per frame (see
    :func:`draw_range`).

    Field of view: ``fov_shapes`` (one is picked per frame), ``octagon_cut`` (corner
    cut, share of the shorter side of its box), ``circle_radius`` (share of half the
    longer side; the circle is cut by its box). Black border strips thinner than
    ``min_border`` are drawn but not labelled.

    Panel: a black box in the lower-left corner with probability ``panel_probability``,
    holding a grey scope diagram with probability ``panel_graphics_probability``.

    Text: glyph height ``text_height * text_scale`` (at least 5 px), stroke thickness
    ``text_stroke`` times the glyph height (``0``: a processor's fixed font, 1 px below
    600 px frames and 2 px above), grey level ``text_level``, line pitch
    ``text_spacing`` glyph heights; the left column starts at ``text_left`` /
    ``text_top``; ``device_names`` are the names a first line may show.

    Instrument: entering from the right or bottom edge with probability
    ``tube_probability``; ``tube_entry`` is where along the edge it may enter (share
    of the field of view, from the far end); ``tube_colour`` (RGB in [0, 1]) times
    ``tube_brightness``. Tubes whose box is smaller than ``min_tube`` squared are drawn
    but not labelled.
    """

    fov_shapes: tuple[str, ...] = ("octagon",)
    fov_left: Range = (0.10, 0.20)
    fov_right: Range = (0.0, 0.05)
    fov_vertical: Range = (0.0, 0.03)
    octagon_cut: Range = (0.15, 0.24)
    circle_radius: Range = (0.98, 1.08)
    min_border: float = 0.0
    panel_probability: float = 0.35
    panel_width: Range = (0.2, 0.3)
    panel_height: Range = (0.22, 0.34)
    panel_graphics_probability: float = 0.0
    text_height: Range = (0.028, 0.028)
    text_scale: float = 1.0
    text_stroke: float = 0.0
    text_level: Range = (0.85, 1.0)
    text_spacing: Range = (1.9, 1.9)
    text_left: Range = (0.01, 0.01)
    text_top: Range = (0.08, 0.14)
    device_names: tuple[str, ...] = ("generic",)
    tube_probability: float = 0.15
    tube_width: Range = (0.06, 0.11)
    tube_length: Range = (0.2, 0.38)
    tube_entry: float = 0.55
    tube_colour: tuple[float, float, float] = (0.58, 0.62, 0.66)
    tube_brightness: Range = (0.85, 1.1)
    min_tube: float = 0.0

    def __post_init__(self) -> None:
        bad = [s for s in self.fov_shapes if s not in FOV_SHAPES]
        if bad or not self.fov_shapes:
            raise ValueError(f"fov_shapes must be a non-empty subset of {FOV_SHAPES}, "
                             f"got {self.fov_shapes!r}")
        if not self.device_names:
            raise ValueError("device_names must hold at least one name")
        for name in ("panel_probability", "panel_graphics_probability", "tube_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name, value in vars(self).items():
            is_range = isinstance(value, tuple) and len(value) == 2 and all(
                isinstance(v, int | float) for v in value)
            if is_range and value[0] > value[1]:
                raise ValueError(f"{name} must be (lo, hi) with lo <= hi, got {value!r}")
