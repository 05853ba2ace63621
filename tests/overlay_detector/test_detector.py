"""The learned overlay detector: trained, loaded, mapped to frame pixels, used by the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endofed.shared.data.site import scan_site
from endofed.shared.data.synthetic import write_site
from endofed.shared.model import build_model, save_checkpoint
from endofed.shared.overlay_detector import (
    CHECKPOINT_KIND,
    CLASS_NAMES,
    LearnedDetector,
    make_composites,
    overlay_recall,
)
from endofed.shared.preprocessing import OverlayDetector, PreprocessConfig, SiteCache
from endofed.shared.preprocessing.pipeline import preprocess_sample

from .conftest import IMAGE_SIZE, as_sample


def _untrained(path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = build_model(preset="tiny", num_classes=len(CLASS_NAMES), image_size=IMAGE_SIZE)
    return str(save_checkpoint(path, model, extra={
        "kind": CHECKPOINT_KIND, "class_names": list(CLASS_NAMES), "image_size": IMAGE_SIZE}))


def test_learned_detector_finds_border_and_panel(trained, fresh, tmp_path):
    det = LearnedDetector(PreprocessConfig(detector="learned", detector_path=trained),
                          score_thresh=0.15)
    rec = overlay_recall(det.detect_boxes, fresh)
    assert rec["border"]["total"] > 20 and rec["box"]["total"] >= 4
    # measured 0.875 (border) and 1.0 (panel) at 0.2 on 24 images of 256 px
    assert rec["border"]["recall"] >= 0.5, rec
    assert rec["box"]["recall"] >= 0.5, rec

    # the same architecture, untrained, finds next to nothing
    path = _untrained(tmp_path / "untrained.pt")
    base = LearnedDetector(PreprocessConfig(detector="learned", detector_path=path),
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
        LearnedDetector(PreprocessConfig(detector="learned", detector_path=str(missing)))
    with pytest.raises(ValueError, match="detector_path"):
        LearnedDetector(PreprocessConfig(detector="learned"))


def test_not_an_overlay_checkpoint(tmp_path):
    lesion = save_checkpoint(tmp_path / "lesion.pt",
                             build_model(preset="tiny", num_classes=1, image_size=64))
    with pytest.raises(ValueError, match="lesion.pt.*not an overlay detector"):
        LearnedDetector(PreprocessConfig(detector="learned", detector_path=str(lesion)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        LearnedDetector(PreprocessConfig(detector="learned", detector_path=str(junk)))


def test_new_weights_at_the_same_path_change_the_cache_key(tmp_path):
    """A retrained detector written over the old file never reuses cached results."""
    write_site(tmp_path / "site", n_images=1, seed=0, size=96)
    rec = scan_site(tmp_path / "site").records[0]
    weights = tmp_path / "overlay.pt"
    config = PreprocessConfig(detector="learned", detector_path=str(weights))
    _untrained(weights, seed=0)
    first = LearnedDetector(config)
    assert isinstance(first, OverlayDetector)
    _untrained(weights, seed=1)  # retrained: same path, other weights
    second = LearnedDetector(config)
    assert first.fingerprint != second.fingerprint
    assert second.fingerprint == LearnedDetector(config).fingerprint
    key = SiteCache(tmp_path / "cache", config, detector=first).key(rec)
    assert key != SiteCache(tmp_path / "cache", config, detector=second).key(rec)
    assert key != SiteCache(tmp_path / "cache", config,
                            detector=LearnedDetector(config, score_thresh=0.5)).key(rec)


def test_preprocess_sample_with_learned_detector(trained):
    c = make_composites(1, size=192, seed=77)[0]
    config = PreprocessConfig(detector="learned", detector_path=trained)
    out, info = preprocess_sample(as_sample(c.image), config, detector=LearnedDetector(config))
    assert out.image.dtype == np.uint8 and out.image.ndim == 3
    assert info.overlays and all(o.type in CLASS_NAMES for o in info.overlays)
    x0, y0, x1, y1 = info.crop_box
    assert (x1 - x0) * (y1 - y0) < 192 * 192  # the black border was cropped away
    assert info.overlay_share_after < info.overlay_share_before
