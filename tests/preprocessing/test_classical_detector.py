import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from endofed.shared.preprocessing import (
    ClassicalDetector,
    OverlayBox,
    OverlayDetector,
    PreprocessConfig,
    default_detector,
)

from .conftest import kvasir_like_frame

MIN_SIDE = 4  # border strips thinner than this are not reported (documented limit)


def _recall(frames, kind: str) -> tuple[int, int]:
    det = ClassicalDetector()
    hit = total = 0
    for f in frames:
        gt = [
            b for b, t in zip(f.overlay_boxes, f.overlay_types)
            if t == kind and min(b[2] - b[0], b[3] - b[1]) >= MIN_SIDE
        ]
        if not gt:
            continue
        pred = [b.xyxy for b in det(f.image).boxes if b.type == kind]
        total += len(gt)
        if pred:
            iou = box_iou(torch.tensor(np.array(gt)), torch.tensor(pred, dtype=torch.float32))
            hit += int((iou.max(dim=1).values >= 0.5).sum())
    return hit, total


@pytest.mark.parametrize("kind", ["border", "box"])
def test_recall_on_synthetic_overlays(synthetic_frames, kind):
    hit, total = _recall(synthetic_frames, kind)
    assert total > 0
    assert hit / total >= 0.95, f"{kind}: recall {hit}/{total}"


def test_text_recall_regression_guard(synthetic_frames):
    # text is best effort (not a >= 0.95 claim); guard against regressions
    hit, total = _recall(synthetic_frames, "text")
    assert total > 10
    assert hit / total >= 0.6, f"text recall {hit}/{total}"


def test_hand_drawn_frame_boxes_and_masks():
    img, _, truth = kvasir_like_frame()
    d = ClassicalDetector()(img)
    panels = d.of_type("box")
    assert len(panels) == 1
    truth_box = torch.tensor([truth["box"][0]], dtype=torch.float32)
    iou = box_iou(torch.tensor([panels[0].xyxy]), truth_box)
    assert float(iou) >= 0.8
    # the panel is never clinical content, the tissue centre always is
    h, w = img.shape[:2]
    assert not d.content[h - 30, 30]
    assert d.content[h // 2, w // 2]
    # the text strokes are found and lie in the top-left region
    assert d.text.sum() > 30
    ys, xs = np.nonzero(d.text)
    assert ys.max() < 80 and xs.max() < 100


def test_clean_frame_has_no_border_or_panel():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal((180, 90, 80), 10, (128, 128, 3)), 0, 255).astype(np.uint8)
    d = ClassicalDetector()(img)
    assert not [b for b in d.boxes if b.type in ("border", "box")]
    assert d.content.all()


def test_default_detector_and_validation():
    assert isinstance(default_detector(PreprocessConfig()), ClassicalDetector)
    assert isinstance(ClassicalDetector(), OverlayDetector)
    # the pipeline builds only the classical detector; another one is passed in
    with pytest.raises(ValueError, match="'nope'.*overlay_detector_for"):
        default_detector(PreprocessConfig(detector="nope"))
    with pytest.raises(ValueError, match="'learned'.*detector="):
        default_detector(PreprocessConfig(detector="learned", detector_path="x.pt"))
    with pytest.raises(ValueError, match="overlay type"):
        OverlayBox("logo", (0, 0, 1, 1))
    with pytest.raises(ValueError, match="RGB uint8"):
        ClassicalDetector()(np.zeros((8, 8), np.uint8))


def test_fingerprint_names_what_the_output_depends_on():
    assert ClassicalDetector().fingerprint == ClassicalDetector(PreprocessConfig()).fingerprint
    assert "classical" in ClassicalDetector().fingerprint
    assert (ClassicalDetector(PreprocessConfig(dark_threshold=40)).fingerprint
            != ClassicalDetector().fingerprint)
