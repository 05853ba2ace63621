"""Whole-site preprocessing: layout, counts, skipped files, cache reuse, the detector part."""

import json

import cv2
import numpy as np
import pytest

from endofed.shared.data.site import scan_site
from endofed.shared.preprocessing import PreprocessConfig, preprocess_site

from .conftest import FindsNothing

FAST = PreprocessConfig(wavelet_levels=1)


@pytest.mark.timeout(120)
def test_preprocess_site_layout_counts_and_skips_corrupt(site, tmp_path):
    (site / "images" / "zz_broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    previous = cv2.getNumThreads()
    cv2.setNumThreads(2)  # regression: forked workers after OpenCV's pool ran must not hang
    try:
        cv2.resize(np.zeros((512, 512, 3), np.uint8), (300, 300))
        report = preprocess_site(site, out, FAST, workers=2, progress=False)
    finally:
        cv2.setNumThreads(previous)
    assert report.images_found == 7
    assert report.written == 6 and report.computed == 6
    assert len(report.scan_problems) + len(report.failed) == 1
    assert any("zz_broken" in p for p, _ in report.scan_problems + report.failed)
    assert len(list((out / "images").glob("*.png"))) == 6
    # every loader reads the output; boxes match the preprocessed masks' lesions
    index = scan_site(out)
    assert len(index.records) == 6
    boxes = json.loads((out / "bboxes.json").read_text())
    assert set(boxes) == {r.image_path.stem for r in index.records}
    again = preprocess_site(site, out, FAST, workers=1, progress=False)
    assert (again.computed, again.cached) == (0, 6)


def test_the_detector_is_a_part_of_the_run(site, tmp_path):
    learned = PreprocessConfig(detector="learned", detector_path=str(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match="'learned'"):  # fails before any work
        preprocess_site(site, tmp_path / "out", learned, progress=False)
    assert not (tmp_path / "out").exists()
    out = tmp_path / "out2"
    report = preprocess_site(site, out, learned, detector=FindsNothing(), workers=2,
                             progress=False)
    assert report.written == 6
    images = json.loads((out / "preprocess_report.json").read_text())["images"]
    assert all(tuple(r["crop_box"]) == (0, 0, r["width"], r["height"]) for r in images)
