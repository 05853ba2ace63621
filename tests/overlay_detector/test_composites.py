"""Training composites: the shared overlay renderer on overlay-free frames, exact boxes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from endofed.shared.overlay_detector import (
    CLASS_NAMES,
    BackgroundFrames,
    composite_dataset,
    list_backgrounds,
    make_composites,
)


def test_composites_have_exact_overlays():
    comps = make_composites(12, size=128, seed=3)
    for c in comps:
        assert c.image.shape == (128, 128, 3) and c.image.dtype == np.uint8
        assert set(c.types) <= set(CLASS_NAMES)
        assert len(c.boxes) == len(c.types)
        for (x0, y0, x1, y1), kind in zip(c.boxes, c.types, strict=True):
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            patch = c.image[int(y0):int(y1), int(x0):int(x1)]
            if kind in ("border", "box"):
                # border strips and panels are black apart from text drawn over them
                assert np.median(patch.max(axis=2)) < 10
            if kind == "text":
                assert patch.min(axis=2).max() > 110  # bright, grey strokes present
    kinds = {t for c in comps for t in c.types}
    assert {"border", "text", "box"} <= kinds


def test_composites_are_deterministic_and_vary():
    a, b = make_composites(6, size=96, seed=1), make_composites(6, size=96, seed=1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.boxes, y.boxes)
    assert not np.array_equal(a[0].image, make_composites(1, size=96, seed=2)[0].image)


def test_backgrounds_from_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_backgrounds(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_backgrounds(tmp_path)
    frame = np.full((60, 80, 3), (200, 90, 80), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert BackgroundFrames(tmp_path, seed=0, size=64)(5).shape == (64, 64, 3)
    comps = make_composites(3, backgrounds=tmp_path, size=64, seed=0)
    for c in comps:  # outside the overlays, the background frame's colour survives
        assert (c.image[~c.overlay_mask] == (200, 90, 80)).all(axis=-1).mean() > 0.5


def test_composite_dataset_targets():
    comps = make_composites(4, size=128, seed=0)
    ds = composite_dataset(comps, image_size=64, train=False)
    assert len(ds) == 4
    image = ds[0][0]
    assert tuple(image.shape) == (3, 64, 64)
