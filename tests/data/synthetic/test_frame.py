"""The frame generator: determinism, exact lesion ground truth, lesion-free share."""

from __future__ import annotations

import numpy as np

from endofed.shared.data.synthetic import MORPHOLOGIES, LesionConfig, render_frame

from .conftest import SIZE, component_boxes, frames


def test_same_seed_same_frame_and_different_seed_differs() -> None:
    a = render_frame(np.random.default_rng(7), size=SIZE)
    b = render_frame(np.random.default_rng(7), size=SIZE)
    c = render_frame(np.random.default_rng(8), size=SIZE)
    assert a.image.dtype == np.uint8 and a.image.shape == (*SIZE, 3)
    assert a.mask.dtype == bool and a.mask.shape == SIZE
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.overlay_boxes, b.overlay_boxes)
    assert a.overlay_types == b.overlay_types and a.morphologies == b.morphologies
    assert np.abs(a.image.astype(int) - c.image.astype(int)).mean() > 5


def test_boxes_are_exactly_the_boxes_of_the_lesion_masks() -> None:
    rendered = frames(40, lesions=LesionConfig(empty_fraction=0.0))
    n_lesions = 0
    for f in rendered:
        assert f.boxes.dtype == np.float32 and f.boxes.shape == (len(f.labels), 4)
        assert f.labels.dtype == np.int64
        assert len(f.morphologies) == len(f.labels)
        assert set(f.morphologies) <= set(MORPHOLOGIES)
        assert np.all(f.labels == 1)
        # One 8-connected component per lesion, and its box is the lesion's box.
        boxes = sorted(tuple(int(v) for v in b) for b in f.boxes)
        assert component_boxes(f.mask) == boxes
        n_lesions += len(boxes)
    assert n_lesions >= 40  # empty_fraction=0: (almost) every frame has a lesion
    assert {m for f in rendered for m in f.morphologies} == set(MORPHOLOGIES)


def test_share_of_lesion_free_frames() -> None:
    rendered = frames(120, seed0=300, size=64)
    share = np.mean([len(f.labels) == 0 for f in rendered])
    assert 0.12 <= share <= 0.40
    assert all(len(f.labels) == 0 and not f.mask.any()
               for f in frames(10, size=64, lesions=LesionConfig(empty_fraction=1.0)))
    assert all(f.image_label == 0 for f in rendered if len(f.labels) == 0)


def test_clean_frame_has_no_overlays_and_a_full_clinical_box() -> None:
    f = render_frame(np.random.default_rng(3), size=SIZE, overlays=False)
    assert f.overlay_types == [] and f.overlay_boxes.shape == (0, 4)
    np.testing.assert_array_equal(f.clinical_box, [0, 0, SIZE[1], SIZE[0]])
