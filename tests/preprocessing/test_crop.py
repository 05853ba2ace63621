import numpy as np
import pytest

from endofed.shared.preprocessing import PreprocessConfig, preprocess_sample
from endofed.shared.preprocessing.crop import CropBox, apply_crop, best_rectangle, find_crop

from .conftest import as_sample, kvasir_like_frame


def _brute_force(gain):
    best, arg = -np.inf, None
    gh, gw = gain.shape
    for y0 in range(gh):
        for y1 in range(y0 + 1, gh + 1):
            for x0 in range(gw):
                for x1 in range(x0 + 1, gw + 1):
                    v = gain[y0:y1, x0:x1].sum()
                    if v > best:
                        best, arg = v, (x0, y0, x1, y1)
    return best, arg


@pytest.mark.parametrize("seed", range(5))
def test_best_rectangle_matches_brute_force(seed):
    gain = np.random.default_rng(seed).normal(0, 1, (7, 6))
    x0, y0, x1, y1 = best_rectangle(gain)
    best, _ = _brute_force(gain)
    assert gain[y0:y1, x0:x1].sum() == pytest.approx(best)


def test_crop_removes_border_and_panel_of_hand_drawn_frame():
    img, mask, _ = kvasir_like_frame(lesion=(120, 90, 180, 150))
    content = img.max(axis=2) > 30
    box = find_crop(content, mask, border_penalty=3.0)
    # the black left strip (x < 30) and the panel are gone; the centre is kept
    assert box.x0 >= 30
    crop = img[box.y0 : box.y1, box.x0 : box.x1]
    assert (crop.max(axis=2) < 30).mean() < 0.05
    assert box.width * box.height > 0.5 * img.shape[0] * img.shape[1]


def test_crop_expands_to_keep_a_lesion_in_the_corner():
    img, mask, _ = kvasir_like_frame(lesion=(40, 10, 100, 60))  # lesion in the octagon corner
    content = img.max(axis=2) > 30
    box = find_crop(content, mask, border_penalty=50.0)  # would otherwise cut the corner
    sub = mask[box.y0 : box.y1, box.x0 : box.x1]
    assert sub.sum() == mask.sum()


def test_apply_crop_offsets_and_clipping():
    img = np.zeros((50, 60, 3), np.uint8)
    mask = np.zeros((50, 60), bool)
    mask[10:20, 30:45] = True
    boxes = np.array([[30, 10, 45, 20], [0, 0, 70, 60]], np.float32)
    _, m, b = apply_crop(img, mask, boxes, CropBox(5, 8, 50, 40))
    assert m.shape == (32, 45)
    np.testing.assert_array_equal(b[0], [25, 2, 40, 12])
    np.testing.assert_array_equal(b[1], [0, 0, 45, 32])  # clipped to the crop
    ys, xs = np.nonzero(m)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(b[0])


def test_pipeline_never_removes_lesion_pixels_and_boxes_follow_masks(synthetic_frames):
    cfg = PreprocessConfig(median=False, wavelet=False)
    for f in synthetic_frames[:40]:
        s = as_sample(f.image, f.mask, f.boxes)
        out, info = preprocess_sample(s, cfg)
        assert out.mask.sum() == f.mask.sum()
        assert info.mask_kept_share == 1.0
        x0, y0, x1, y1 = info.crop_box
        np.testing.assert_array_equal(out.mask, f.mask[y0:y1, x0:x1])
        assert out.image.shape[:2] == out.mask.shape
        # every box moved by the crop offset, unchanged in size
        np.testing.assert_allclose(out.boxes, f.boxes - np.array([x0, y0, x0, y0]))
        # each synthetic lesion is one mask component whose bbox is its box
        for b in out.boxes:
            bx0, by0, bx1, by1 = (int(v) for v in b)
            region = out.mask[by0:by1, bx0:bx1]
            assert region[0].any() and region[-1].any()
            assert region[:, 0].any() and region[:, -1].any()


def test_pipeline_crops_overlays_on_synthetic_frames(synthetic_frames):
    cfg = PreprocessConfig(median=False, wavelet=False)
    before, after = [], []
    for f in synthetic_frames[:40]:
        out, info = preprocess_sample(as_sample(f.image, f.mask, f.boxes), cfg)
        before.append((f.image.max(axis=2) < 20).mean())
        after.append((out.image.max(axis=2) < 20).mean())
        assert info.overlay_share_after <= info.overlay_share_before
    assert np.mean(after) < 0.3 * np.mean(before)


def test_text_inside_the_crop_is_inpainted():
    img, mask, _ = kvasir_like_frame(text_at=(100, 110))
    cfg = PreprocessConfig(median=False, wavelet=False)
    out, info = preprocess_sample(as_sample(img, mask), cfg)
    assert info.text_pixels_inpainted > 30
    # no near-white text strokes remain
    assert (out.image.min(axis=2) > 200).sum() < 5
