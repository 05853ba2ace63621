"""Boxes, masks, labels and morphology stay consistent through the v2 pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from endofed.shared.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transforms,
    to_tv_sample,
)

S = 64


def _mask_bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _draws(transform, n: int, seed: int):
    """Random single-rectangle samples through ``transform``: (box or None, mask)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for _ in range(n):
        h, w = 96, 128
        x0, y0 = int(rng.integers(0, 90)), int(rng.integers(0, 60))
        x1, y1 = x0 + int(rng.integers(10, 38)), y0 + int(rng.integers(10, 36))
        img = np.zeros((h, w, 3), np.uint8)
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        out = transform(to_tv_sample(img, m, np.array([[x0, y0, x1, y1]]), np.array([1])))
        mask = out["mask"][0].numpy() > 0
        assert out["image"].shape == (3, S, S) and mask.shape == (S, S)
        boxes = out["boxes"].as_subclass(torch.Tensor).numpy()
        yield (boxes[0] if len(boxes) else None), mask


def test_rectangles_without_rotation_match_within_a_pixel():
    t = build_transforms(S, train=True, rotation=0, normalize=False)
    errors = []
    for box, mask in _draws(t, 300, seed=0):
        if box is None:
            # dropped only when (almost) nothing of the lesion is left in the frame
            assert mask.sum() <= 2 * S
            continue
        assert mask.any()
        # nearest-neighbour mask resampling (zoom out then resize) shifts edges < 2 px
        errors.append(np.abs(_mask_bbox(mask) - box).max())
    assert len(errors) > 250
    assert max(errors) < 2.0 and np.median(errors) < 1.0


def test_rotated_rectangles_stay_close():
    # a rotated box is the enclosing box of the rotated corners: exact unless clipped
    t = build_transforms(S, train=True, rotation=15, rotation_p=1.0, normalize=False)
    errors = []
    for box, mask in _draws(t, 300, seed=1):
        if box is not None:
            # a clipped corner sliver may keep a box after its few mask pixels vanished
            errors.append(np.abs(_mask_bbox(mask) - box).max() if mask.any() else np.inf)
    errors = np.asarray(errors)
    assert len(errors) > 250
    assert np.median(errors) < 1.0
    assert np.mean(errors <= 2.0) > 0.9


def test_labels_and_morphology_follow_their_boxes():
    t = build_transforms(S, train=True, zoom_in=0.3, zoom_in_p=1.0, normalize=False)
    torch.manual_seed(0)
    img = np.zeros((96, 128, 3), np.uint8)
    mask = np.zeros((96, 128), bool)
    boxes = np.array([[2, 2, 30, 30], [90, 60, 126, 94], [50, 30, 70, 50]], np.float32)
    labels = np.array([1, 2, 3])
    morph = np.array([10, 20, 30])
    counts = set()
    for _ in range(100):
        out = t(to_tv_sample(img, mask, boxes, labels, morph))
        lab, mor = out["labels"], out["morphology"]
        assert len(lab) == len(mor) == len(out["boxes"])
        assert torch.equal(mor, lab * 10)
        counts.add(len(lab))
    assert len(counts) > 1  # crops did drop boxes sometimes


def test_eval_transform_is_a_plain_resize_and_normalises():
    t = build_transforms(S, train=False)
    img = np.full((96, 128, 3), 128, np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[48:96, 64:128] = True
    out = t(to_tv_sample(img, mask, np.array([[64, 48, 128, 96]]), np.array([1])))
    np.testing.assert_allclose(out["boxes"].as_subclass(torch.Tensor).numpy(),
                               [[32, 32, 64, 64]], atol=1e-4)
    assert out["image"].dtype == torch.float32
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out["image"].mean(dim=(1, 2)).numpy(), expected, atol=1e-3)
    m = out["mask"][0].numpy()
    assert m[32:, 32:].all() and not m[:32].any() and not m[:, :32].any()


def test_mask_survives_when_a_box_is_dropped():
    # two lesions, one dropped by the crop: the union mask must keep the other
    t = build_transforms(S, train=True, zoom_in=0.25, zoom_in_p=1.0, hflip=0, vflip=0,
                         rotation=0, zoom_out_p=0, normalize=False)
    torch.manual_seed(3)
    img = np.zeros((96, 128, 3), np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[2:30, 2:30] = True
    mask[60:94, 90:126] = True
    boxes = np.array([[2, 2, 30, 30], [90, 60, 126, 94]], np.float32)
    seen_partial = False
    for _ in range(60):
        out = t(to_tv_sample(img, mask, boxes, np.array([1, 1])))
        n = len(out["boxes"])
        assert out["mask"].shape == (1, S, S)
        if n == 1:
            seen_partial = True
            assert out["mask"].sum() > 0
    assert seen_partial
    # one lesion whose box gets dropped: the mask keeps its (1, S, S) shape
    dropped = 0
    for _ in range(60):
        out = t(to_tv_sample(img, mask, boxes[:1], np.array([1])))
        assert out["mask"].shape == (1, S, S)
        dropped += len(out["boxes"]) == 0
    assert dropped > 0


@pytest.mark.parametrize("train", [True, False])
def test_empty_targets_pass_through(train):
    t = build_transforms(S, train=train)
    out = t(to_tv_sample(np.zeros((40, 50, 3), np.uint8), np.zeros((40, 50), bool),
                         np.zeros((0, 4)), np.zeros(0)))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
    assert out["image"].shape == (3, S, S)


def test_camera_shift_changes_colour_only() -> None:
    """Per-channel gain and gamma on the image; boxes and mask are untouched."""
    import numpy as np
    import torch
    from torchvision import tv_tensors

    from endofed.shared.data.transforms import RandomCameraShift, to_tv_sample

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[5:20, 10:30] = True
    sample = to_tv_sample(image, mask, np.array([[10, 5, 30, 20]]), np.array([1]))
    torch.manual_seed(3)
    t = RandomCameraShift(gain=0.2, gamma=0.3)
    params = t.make_params([sample["image"]])
    torch.manual_seed(3)
    out = t(sample)
    g, gamma = params["gains"].numpy(), params["gamma"]
    want = np.clip(image / 255.0 * g, 0, 1) ** gamma * 255.0  # independent numpy reference
    got = out["image"].permute(1, 2, 0).numpy().astype(float)
    assert np.abs(got - np.round(want)).max() <= 1.0
    assert not np.array_equal(got, image)
    assert isinstance(out["image"], tv_tensors.Image)
    assert torch.equal(out["boxes"], sample["boxes"]) and torch.equal(out["mask"], sample["mask"])
    assert (np.abs(g - 1) <= 0.2).all() and 1 / 1.3 <= gamma <= 1.3
