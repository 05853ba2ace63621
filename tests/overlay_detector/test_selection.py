"""Composition: the detector a config names is built outside the pipeline and passed in."""

from __future__ import annotations

import pytest

from endofed.shared.overlay_detector import DETECTOR_NAMES, LearnedDetector, overlay_detector_for
from endofed.shared.preprocessing import ClassicalDetector, PreprocessConfig


def test_names_build_their_detector(trained):
    assert DETECTOR_NAMES == ("classical", "learned")
    assert isinstance(overlay_detector_for(PreprocessConfig()), ClassicalDetector)
    learned = overlay_detector_for(PreprocessConfig(detector="learned", detector_path=trained))
    assert isinstance(learned, LearnedDetector)


def test_unknown_name_and_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="unknown overlay detector 'nope'"):
        overlay_detector_for(PreprocessConfig(detector="nope"))
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        overlay_detector_for(PreprocessConfig(detector="learned", detector_path=str(missing)))
    with pytest.raises(ValueError, match="detector_path"):
        overlay_detector_for(PreprocessConfig(detector="learned"))
