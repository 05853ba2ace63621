"""The overlay renderer: every labelled box is exactly where its pixels were drawn."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from endofed.shared.data.synthetic import (
    OVERLAY_TYPES,
    LesionConfig,
    OverlayStyle,
    burn_in_overlays,
    composite_overlays,
    draw_field_of_view,
    place_overlays,
)
from endofed.shared.data.synthetic.raster import bbox_of

from .conftest import frames, overlap

# A style with every optional part on and wide ranges (as the learned detector's).
WIDE = OverlayStyle(
    fov_shapes=("octagon", "circle"), fov_left=(0.06, 0.22), fov_right=(0.0, 0.12),
    fov_vertical=(0.0, 0.08), min_border=0.03, panel_probability=0.7,
    panel_graphics_probability=0.5, text_height=(0.03, 0.05), text_stroke=0.1,
    text_level=(0.67, 1.0), text_spacing=(1.7, 2.2), text_left=(0.005, 0.03),
    device_names=("OLYMPUS", "FUJINON"), tube_probability=0.8, min_tube=0.04,
)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A flat, mid-grey-red float background (nothing in it looks like an overlay)."""
    base = np.array([0.7, 0.4, 0.35], np.float32)
    return (base + rng.uniform(-0.05, 0.05, (h, w, 3))).astype(np.float32)


def test_lesions_lie_in_the_clinical_box_and_never_under_overlays() -> None:
    rendered = frames(40, seed0=100, lesions=LesionConfig(empty_fraction=0.0, max_lesions=3))
    seen_types: set[str] = set()
    for f in rendered:
        assert len(f.overlay_types) == len(f.overlay_boxes)
        assert set(f.overlay_types) <= set(OVERLAY_TYPES)
        seen_types |= set(f.overlay_types)
        cb = f.clinical_box
        assert cb[2] > cb[0] and cb[3] > cb[1]
        for ob in f.overlay_boxes:
            assert not overlap(ob, cb), "clinical box intersects an overlay"
            x0, y0, x1, y1 = (int(v) for v in ob)
            assert not f.mask[y0:y1, x0:x1].any(), "lesion pixels under an overlay"
        for b in f.boxes:
            assert cb[0] <= b[0] and cb[1] <= b[1] and b[2] <= cb[2] and b[3] <= cb[3]
            for ob in f.overlay_boxes:
                assert not overlap(b, ob)
    assert {"border", "text"} <= seen_types


def test_overlay_ground_truth_matches_the_pixels() -> None:
    rendered = frames(30, seed0=200, size=(128, 160))
    panels = tubes = 0
    for f in rendered:
        gray = f.image.max(axis=2).astype(int)
        text = np.zeros(gray.shape, bool)
        for t, (x0, y0, x1, y1) in zip(f.overlay_types, f.overlay_boxes.astype(int)):
            if t == "text":
                text[y0:y1, x0:x1] = True
                # One line of bright glyphs, a few pixels high.
                assert gray[y0:y1, x0:x1].max() > 100
                assert 3 <= y1 - y0 <= 12 and x1 - x0 > y1 - y0
        for t, (x0, y0, x1, y1) in zip(f.overlay_types, f.overlay_boxes.astype(int)):
            region, free = gray[y0:y1, x0:x1], ~text[y0:y1, x0:x1]
            if t in ("border", "box"):
                assert region[free].max() <= 10, f"{t} region is not black"
                panels += t == "box"
            if t == "tube":
                assert np.median(region) > 40, "tube box holds no visible instrument"
                tubes += 1
        # Outside all overlays, inside the clinical box, there is tissue (not black).
        x0, y0, x1, y1 = f.clinical_box.astype(int)
        assert np.median(gray[y0:y1, x0:x1]) > 40
    assert panels > 0 and tubes > 0  # both kinds occur in 30 frames


@pytest.mark.parametrize("style", [OverlayStyle(), WIDE], ids=["site", "wide"])
def test_renderer_boxes_match_the_drawn_pixels(style: OverlayStyle) -> None:
    """Draw each part alone and compare: a box is the tight box of its own pixels."""
    seen: set[str] = set()
    for i in range(25):
        rng = np.random.default_rng([i, 31])
        h, w = (120, 150) if i % 2 else (160, 128)
        fov = draw_field_of_view(rng, h, w, style)
        background = _background(rng, h, w)
        image = background.copy()
        plan = place_overlays(rng, image, fov, style)
        seen |= set(plan.types)
        tubes = [b for t, b in plan.labelled if t == "tube"]
        drawn = np.any(image != background, axis=2)  # only the instrument so far
        if tubes:
            assert bbox_of(drawn) == tubes[0]
            assert not (drawn & ~fov.mask).any()  # seen through the field of view only
        no_text = dataclasses.replace(plan, text=())
        bare = burn_in_overlays(copy.deepcopy(rng), image, no_text)
        for line in plan.text:
            alone = burn_in_overlays(copy.deepcopy(rng), image,
                                     dataclasses.replace(plan, text=(line,)))
            assert bbox_of(np.any(alone != bare, axis=2)) == line.box, line.text
        # without text, border strips and the panel are near-black, but for the diagram
        plain = burn_in_overlays(copy.deepcopy(rng), image,
                                 dataclasses.replace(no_text, panel_graphics=None))
        diagram = np.any(plain != bare, axis=2)
        if plan.panel_graphics is not None:
            x0, y0, x1, y1 = plan.panel
            assert diagram.any() and not diagram[:y0].any() and not diagram[:, x1:].any()
        black = np.zeros((h, w), bool)
        strips = np.zeros((h, w), bool)
        for kind, (x0, y0, x1, y1) in plan.labelled:
            if kind in ("border", "box"):
                black[y0:y1, x0:x1] = True
            if kind == "border":
                strips[y0:y1, x0:x1] = True
        assert plain[black].max() <= 0.012 + 1e-6
        # the labelled border strips are the strips outside the field of view's box
        fx0, fy0, fx1, fy1 = fov.box
        outside = np.ones((h, w), bool)
        outside[fy0:fy1, fx0:fx1] = False
        assert not (strips & ~outside).any() and not (strips & fov.mask).any()
        if style.min_border == 0:
            np.testing.assert_array_equal(strips, outside)
    assert {"border", "text", "box", "tube"} <= seen


def test_composite_keeps_the_background_outside_its_overlays() -> None:
    rng = np.random.default_rng(5)
    h, w = 144, 176
    for i in range(12):
        background = (_background(rng, h, w) * 255).round().astype(np.uint8)
        c = composite_overlays(np.random.default_rng([i, 2]), background, style=WIDE)
        assert c.image.dtype == np.uint8 and c.image.shape == (h, w, 3)
        assert len(c.boxes) == len(c.types) == len(c.labels)
        assert [OVERLAY_TYPES[k - 1] for k in c.labels] == c.types
        touched = c.overlay_mask.copy()
        for kind, (x0, y0, x1, y1) in zip(c.types, c.boxes.astype(int)):
            if kind in ("text", "tube"):
                touched[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(c.image[~touched], background[~touched])
        assert c.image[c.overlay_mask].max(axis=-1).mean() < 10  # border and panel: black


def test_overlay_style_validation() -> None:
    with pytest.raises(ValueError, match="fov_shapes"):
        OverlayStyle(fov_shapes=("square",))
    with pytest.raises(ValueError, match="tube_probability"):
        OverlayStyle(tube_probability=1.5)
    with pytest.raises(ValueError, match="text_height"):
        OverlayStyle(text_height=(0.05, 0.03))
