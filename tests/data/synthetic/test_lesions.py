"""Lesion classes are data; each class takes its morphologies."""

from __future__ import annotations

import numpy as np
import pytest

from endofed.shared.data.synthetic import LesionConfig

from .conftest import frames


def test_classes_are_data() -> None:
    cfg = LesionConfig(class_names=("polyp", "cancer", "ulcer"), empty_fraction=0.0)
    rendered = frames(40, seed0=400, lesions=cfg)
    labels = np.concatenate([f.labels for f in rendered])
    assert set(labels.tolist()) == {1, 2, 3}
    by_morph = LesionConfig(class_names=("depressed", "protruding"), empty_fraction=0.0)
    for f in frames(20, seed0=500, lesions=by_morph):
        for lab, m in zip(f.labels, f.morphologies):
            assert by_morph.class_names[lab - 1] == m
    with pytest.raises(ValueError, match="reserved"):
        LesionConfig(class_names=("normal",))
    with pytest.raises(ValueError, match="morpholog"):
        LesionConfig(class_names=("a",), class_morphologies={"a": ("bumpy",)})
