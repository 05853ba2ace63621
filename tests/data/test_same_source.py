"""Same-source crops on synthetic frames with a drawn lesion (expected values by hand)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from endofed.shared.data.dataset import DetectionDataset
from endofed.shared.data.same_source import (
    LESION_CROP,
    NORMAL_CROP,
    SKIP_NO_FREE_CROP,
    SKIP_NO_LESION,
    Crop,
    CropConfig,
    CropLoader,
    crop_frame,
    frame_rng,
    plan_crops,
    same_source_samples,
    write_same_source_site,
)
from endofed.shared.data.sample import Sample, SampleMeta
from endofed.shared.data.site import scan_site

H, W = 120, 160


def _texture(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    """Bright, non-dark tissue-like noise (every channel in 80..200)."""
    return rng.integers(80, 200, (h, w, 3), dtype=np.uint8)


def _disc(cx: int, cy: int, r: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (cx, cy), r, 1, -1)
    return mask.astype(bool)


def _box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


def _sample(image: np.ndarray, mask: np.ndarray) -> Sample:
    boxes = _box_of(mask) if mask.any() else np.zeros((0, 4), np.float32)
    return Sample(image=image, mask=mask, boxes=boxes,
                  labels=np.ones(len(boxes), np.int64), meta=SampleMeta(source="synthetic"))


def _write_site(root: Path, frames: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, (image, mask) in frames.items():
        cv2.imwrite(str(root / "images" / f"{stem}.png"), image[..., ::-1])
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask.astype(np.uint8) * 255)
    return root


def _inside(crop: Crop, h: int = H, w: int = W) -> bool:
    return 0 <= crop.x0 < crop.x1 <= w and 0 <= crop.y0 < crop.y1 <= h


@pytest.fixture
def site(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    frames = {
        f"f{i}": (_texture(rng), _disc(30 + 20 * i, 35 + 10 * i, 14)) for i in range(4)
    }
    frames["full"] = (_texture(rng), np.ones((H, W), bool))  # lesion fills the frame
    frames["empty"] = (_texture(rng), np.zeros((H, W), bool))  # no lesion at all
    return _write_site(tmp_path / "site", frames)


def test_normal_crop_is_lesion_free_and_lesion_crop_holds_the_box() -> None:
    rng = np.random.default_rng(0)
    mask = _disc(40, 40, 15)  # box x 25..56, y 25..56
    sample = _sample(_texture(rng), mask)
    cfg = CropConfig()
    for seed in range(10):
        lesion, normal = crop_frame(sample, frame_rng(seed, "a.png"), cfg)
        assert lesion.side == normal.side >= np.ceil(H / 3)
        assert _inside(lesion) and _inside(normal)
        assert mask[normal.y0:normal.y1, normal.x0:normal.x1].sum() == 0
        # and at least the dilation radius (3 % of 120 = 4 px) from the lesion
        dist = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
        assert dist[normal.y0:normal.y1, normal.x0:normal.x1].min() > 3.6
        x0, y0, x1, y1 = sample.boxes[0]
        assert lesion.x0 <= x0 and lesion.y0 <= y0 and lesion.x1 >= x1 and lesion.y1 >= y1


def test_crops_are_deterministic_per_seed_and_independent_of_order(site: Path) -> None:
    records = scan_site(site).records
    a = plan_crops(records, seed=3)
    b = plan_crops(records, seed=3)
    backwards = plan_crops(list(reversed(records)), seed=3)
    other = plan_crops(records, seed=4)

    def by_frame(plan):
        return {(r.image_path.name, r.kind): r.crop for r in plan.records}

    assert by_frame(a) == by_frame(b) == by_frame(backwards)
    assert by_frame(a) != by_frame(other)


def test_frames_without_room_or_lesion_are_skipped_and_counted(site: Path) -> None:
    plan = plan_crops(scan_site(site).records, seed=0)
    assert plan.frames == 6
    assert plan.skipped == {SKIP_NO_FREE_CROP: 1, SKIP_NO_LESION: 1}
    assert plan.used_frames == 4
    assert [r.kind for r in plan.records] == [LESION_CROP, NORMAL_CROP] * 4
    assert {r.image_path.stem for r in plan.records} == {"f0", "f1", "f2", "f3"}
    assert plan.counts()["lesion_crops"] == plan.counts()["normal_crops"] == 4


def test_loaded_crops_carry_the_right_pixels_mask_and_boxes(site: Path) -> None:
    records = scan_site(site).records
    plan = plan_crops(records, seed=0)
    load = CropLoader()
    for rec in plan.records:
        frame = cv2.imread(str(rec.image_path))[..., ::-1]
        full_mask = cv2.imread(str(site / "masks" / rec.image_path.name), 0) > 127
        s = load(rec)
        c = rec.crop
        np.testing.assert_array_equal(s.image, frame[c.y0:c.y1, c.x0:c.x1])
        if rec.kind == NORMAL_CROP:
            assert not s.mask.any() and s.boxes.shape == (0, 4) and len(s.labels) == 0
        else:
            np.testing.assert_array_equal(s.mask, full_mask[c.y0:c.y1, c.x0:c.x1])
            box = _box_of(full_mask)[0] - np.array([c.x0, c.y0, c.x0, c.y0])
            np.testing.assert_allclose(s.boxes, [box])
            assert s.labels.tolist() == [1]
    # the in-memory iterator gives the same crops
    samples = list(same_source_samples(records, seed=0))
    assert len(samples) == len(plan.records)
    np.testing.assert_array_equal(samples[0].image, load(plan.records[0]).image)


def test_normal_crop_avoids_a_dark_border_and_the_avoid_mask() -> None:
    rng = np.random.default_rng(2)
    image = _texture(rng)
    image[:, :70] = 5  # black panel on the left
    mask = _disc(115, 60, 12)
    sample = _sample(image, mask)
    avoid = np.zeros((H, W), bool)
    avoid[:40, 70:] = True  # e.g. burnt-in text: top right
    for seed in range(8):
        plan = crop_frame(sample, frame_rng(seed, "x"), CropConfig(), avoid=avoid)
        assert not isinstance(plan, str)
        for crop in plan:
            dark = (image[crop.y0:crop.y1, crop.x0:crop.x1].max(axis=2) < 30).mean()
            assert dark <= 0.1
            assert not avoid[crop.y0:crop.y1, crop.x0:crop.x1].any()


def test_crops_feed_the_detection_dataset_and_a_written_site(site: Path, tmp_path: Path) -> None:
    records = scan_site(site).records
    plan = plan_crops(records, seed=0)
    ds = DetectionDataset(plan.records, image_size=32, train=False, loader=CropLoader())
    labels = [int(ds[i][5]) for i in range(len(ds))]
    assert labels == [1, 0] * 4
    assert int(ds[0][4]) == 1 and float(ds[0][1].sum()) > 0 and float(ds[1][1].sum()) == 0

    out = write_same_source_site(plan, tmp_path / "out", ["lesion"])
    index = scan_site(out)
    assert not index.report.problems
    by_stem = {r.image_path.stem: r for r in index.records}
    assert len(by_stem) == 8
    for rec in plan.records:
        got = by_stem[f"{rec.image_path.stem}_{rec.kind}"]
        assert (got.height, got.width) == (rec.crop.side, rec.crop.side)
        np.testing.assert_allclose(got.boxes, rec.boxes)
    # both crops of a frame share a group, so a split keeps them together
    assert len({r.group_id for r in index.records}) == 4
