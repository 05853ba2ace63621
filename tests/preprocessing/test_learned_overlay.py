"""The optional learned overlay detector: composites, training, loading, pipeline use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endofed.shared.preprocessing import PreprocessConfig, available_detectors, get_detector
from endofed.shared.preprocessing.learned_overlay import (
    CHECKPOINT_KIND,
    CLASS_NAMES,
    LearnedDetector,
    make_composites,
    overlay_recall,
    train_overlay_detector,
)
from endofed.shared.preprocessing.pipeline import preprocess_sample

from .conftest import as_sample

torch.set_num_threads(1)

IMAGE_SIZE = 96


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A detector trained on 32 composites for 30 epochs (~10-25 s on one CPU thread)."""
    out = tmp_path_factory.mktemp("overlay") / "overlay.pt"
    train_overlay_detector(out, n_images=32, image_size=IMAGE_SIZE, epochs=30, batch_size=8,
                           seed=0, device="cpu")
    return str(out)


@pytest.fixture(scope="module")
def fresh():
    """Composites never seen in training (another seed)."""
    return make_composites(16, size=192, seed=4242)


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


def test_detector_registered():
    assert "learned" in available_detectors()


def test_learned_detector_finds_border_and_panel(trained, fresh, tmp_path):
    det = LearnedDetector(PreprocessConfig(detector="learned", detector_path=trained),
                          score_thresh=0.15)
    rec = overlay_recall(det.detect_boxes, fresh)
    assert rec["border"]["total"] > 20 and rec["box"]["total"] >= 4
    # measured 0.875 (border) and 1.0 (panel) at 0.2 on 24 images of 256 px
    assert rec["border"]["recall"] >= 0.5, rec
    assert rec["box"]["recall"] >= 0.5, rec

    # the same architecture, untrained, finds next to nothing
    from endofed.shared.model import build_model, save_checkpoint

    untrained = build_model(preset="tiny", num_classes=len(CLASS_NAMES), image_size=IMAGE_SIZE)
    path = save_checkpoint(tmp_path / "untrained.pt", untrained, extra={
        "kind": CHECKPOINT_KIND, "class_names": list(CLASS_NAMES), "image_size": IMAGE_SIZE})
    base = LearnedDetector(PreprocessConfig(detector="learned", detector_path=str(path)),
                           score_thresh=0.15)
    rec0 = overlay_recall(base.detect_boxes, fresh)
    assert rec["border"]["recall"] > rec0["border"]["recall"] + 0.3
    assert rec["box"]["recall"] > rec0["box"]["recall"] + 0.3


def test_boxes_mapped_to_frame_coordinates(trained, fresh):
    det = LearnedDetector(PreprocessConfig(detector="learned", detector_path=trained),
                          score_thresh=0.15)
    c = fresh[0]
    wide = np.ascontiguousarray(np.repeat(c.image, 2, axis=1))  # 192 x 384 frame
    boxes = det.detect_boxes(wide)
    assert boxes
    xs = np.array([b.xyxy for b in boxes])
    assert xs[:, [0, 2]].max() <= 384 and xs[:, [1, 3]].max() <= 192
    assert xs[:, 2].max() > 192  # some box lies in the right half of the wide frame


def test_missing_file_clear_error(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        get_detector(PreprocessConfig(detector="learned", detector_path=str(missing)))
    with pytest.raises(ValueError, match="detector_path"):
        get_detector(PreprocessConfig(detector="learned"))


def test_not_an_overlay_checkpoint(tmp_path):
    from endofed.shared.model import build_model, save_checkpoint

    lesion = save_checkpoint(tmp_path / "lesion.pt",
                             build_model(preset="tiny", num_classes=1, image_size=64))
    with pytest.raises(ValueError, match="lesion.pt.*not an overlay detector"):
        LearnedDetector(PreprocessConfig(detector="learned", detector_path=str(lesion)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        LearnedDetector(PreprocessConfig(detector="learned", detector_path=str(junk)))


def test_preprocess_sample_with_learned_detector(trained):
    c = make_composites(1, size=192, seed=77)[0]
    sample = as_sample(c.image, np.zeros(c.image.shape[:2], bool))
    config = PreprocessConfig(detector="learned", detector_path=trained)
    out, info = preprocess_sample(sample, config)
    assert out.image.dtype == np.uint8 and out.image.ndim == 3
    assert info.overlays and all(o.type in CLASS_NAMES for o in info.overlays)
    x0, y0, x1, y1 = info.crop_box
    assert (x1 - x0) * (y1 - y0) < 192 * 192  # the black border was cropped away
    assert info.overlay_share_after < info.overlay_share_before
