"""The synthetic endoscopy generator: determinism, exact ground truth, sites on disk."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from endofed.shared.data.synthetic import (
    MORPHOLOGIES,
    OVERLAY_TYPES,
    LesionConfig,
    SyntheticFrame,
    device_profile_for_site,
    render_frame,
    write_site,
    write_sites,
)

SIZE = (96, 112)


def _frames(n: int, *, seed0: int = 0, size=SIZE, **kw) -> list[SyntheticFrame]:
    return [
        render_frame(np.random.default_rng(seed0 + i), size=size,
                     profile=device_profile_for_site(i % 4), **kw)
        for i in range(n)
    ]


def _component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return sorted((int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:n])


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# ----------------------------------------------------------------------------- frames


def test_same_seed_same_frame_and_different_seed_differs() -> None:
    a = render_frame(np.random.default_rng(7), size=SIZE)
    b = render_frame(np.random.default_rng(7), size=SIZE)
    c = render_frame(np.random.default_rng(8), size=SIZE)
    assert a.image.dtype == np.uint8 and a.image.shape == (*SIZE, 3)
    assert a.mask.dtype == bool and a.mask.shape == SIZE
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.overlay_boxes, b.overlay_boxes)
    assert a.overlay_types == b.overlay_types and a.morphologies == b.morphologies
    assert np.abs(a.image.astype(int) - c.image.astype(int)).mean() > 5


def test_boxes_are_exactly_the_boxes_of_the_lesion_masks() -> None:
    frames = _frames(40, lesions=LesionConfig(empty_fraction=0.0))
    n_lesions = 0
    for f in frames:
        assert f.boxes.dtype == np.float32 and f.boxes.shape == (len(f.labels), 4)
        assert f.labels.dtype == np.int64
        assert len(f.morphologies) == len(f.labels)
        assert set(f.morphologies) <= set(MORPHOLOGIES)
        assert np.all(f.labels == 1)
        # One 8-connected component per lesion, and its box is the lesion's box.
        boxes = sorted(tuple(int(v) for v in b) for b in f.boxes)
        assert _component_boxes(f.mask) == boxes
        n_lesions += len(boxes)
    assert n_lesions >= 40  # empty_fraction=0: (almost) every frame has a lesion
    assert {m for f in frames for m in f.morphologies} == set(MORPHOLOGIES)


def test_lesions_lie_in_the_clinical_box_and_never_under_overlays() -> None:
    frames = _frames(40, seed0=100, lesions=LesionConfig(empty_fraction=0.0, max_lesions=3))
    seen_types: set[str] = set()
    for f in frames:
        assert len(f.overlay_types) == len(f.overlay_boxes)
        assert set(f.overlay_types) <= set(OVERLAY_TYPES)
        seen_types |= set(f.overlay_types)
        cb = f.clinical_box
        assert cb[2] > cb[0] and cb[3] > cb[1]
        for ob in f.overlay_boxes:
            assert not _overlap(ob, cb), "clinical box intersects an overlay"
            x0, y0, x1, y1 = (int(v) for v in ob)
            assert not f.mask[y0:y1, x0:x1].any(), "lesion pixels under an overlay"
        for b in f.boxes:
            assert cb[0] <= b[0] and cb[1] <= b[1] and b[2] <= cb[2] and b[3] <= cb[3]
            for ob in f.overlay_boxes:
                assert not _overlap(b, ob)
    assert {"border", "text"} <= seen_types


def test_overlay_ground_truth_matches_the_pixels() -> None:
    frames = _frames(30, seed0=200, size=(128, 160))
    panels = tubes = 0
    for f in frames:
        gray = f.image.max(axis=2).astype(int)
        text = np.zeros(gray.shape, bool)
        for t, (x0, y0, x1, y1) in zip(f.overlay_types, f.overlay_boxes.astype(int)):
            if t == "text":
                text[y0:y1, x0:x1] = True
                # One line of bright glyphs, a few pixels high.
                assert gray[y0:y1, x0:x1].max() > 100
                assert 3 <= y1 - y0 <= 12 and x1 - x0 > y1 - y0
        for t, (x0, y0, x1, y1) in zip(f.overlay_types, f.overlay_boxes.astype(int)):
            region, free = gray[y0:y1, x0:x1], ~text[y0:y1, x0:x1]
            if t in ("border", "box"):
                assert region[free].max() <= 10, f"{t} region is not black"
                panels += t == "box"
            if t == "tube":
                assert np.median(region) > 40, "tube box holds no visible instrument"
                tubes += 1
        # Outside all overlays, inside the clinical box, there is tissue (not black).
        x0, y0, x1, y1 = f.clinical_box.astype(int)
        assert np.median(gray[y0:y1, x0:x1]) > 40
    assert panels > 0 and tubes > 0  # both kinds occur in 30 frames


def test_device_profiles_give_sites_different_colours() -> None:
    profiles = [device_profile_for_site(k, seed=3) for k in range(4)]
    assert device_profile_for_site(2, seed=3) == profiles[2]
    assert device_profile_for_site(2, seed=4) != profiles[2]
    cfg = LesionConfig(empty_fraction=1.0)
    means = []
    for p in profiles:  # the same scenes through each device
        imgs = [render_frame(np.random.default_rng(i), size=64, profile=p, lesions=cfg,
                             overlays=False).image for i in range(6)]
        means.append(np.mean([im.reshape(-1, 3).mean(0) for im in imgs], axis=0))
    means = np.asarray(means)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(means[i] - means[j]).max() > 3.0, (i, j, means)


def test_share_of_lesion_free_frames() -> None:
    frames = _frames(120, seed0=300, size=64)
    share = np.mean([len(f.labels) == 0 for f in frames])
    assert 0.12 <= share <= 0.40
    assert all(len(f.labels) == 0 and not f.mask.any()
               for f in _frames(10, size=64, lesions=LesionConfig(empty_fraction=1.0)))
    assert all(f.image_label == 0 for f in frames if len(f.labels) == 0)


def test_classes_are_data() -> None:
    cfg = LesionConfig(class_names=("polyp", "cancer", "ulcer"), empty_fraction=0.0)
    frames = _frames(40, seed0=400, lesions=cfg)
    labels = np.concatenate([f.labels for f in frames])
    assert set(labels.tolist()) == {1, 2, 3}
    by_morph = LesionConfig(class_names=("depressed", "protruding"), empty_fraction=0.0)
    for f in _frames(20, seed0=500, lesions=by_morph):
        for lab, m in zip(f.labels, f.morphologies):
            assert by_morph.class_names[lab - 1] == m
    with pytest.raises(ValueError, match="reserved"):
        LesionConfig(class_names=("normal",))
    with pytest.raises(ValueError, match="morpholog"):
        LesionConfig(class_names=("a",), class_morphologies={"a": ("bumpy",)})


# ----------------------------------------------------------------------------- sites


def test_write_site_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    kw = dict(n_images=6, site_index=1, size=64)
    write_site(tmp_path / "a", seed=5, **kw)
    write_site(tmp_path / "b", seed=5, **kw)
    write_site(tmp_path / "c", seed=6, **kw)
    da, db, dc = (_tree_digest(tmp_path / n) for n in "abc")
    assert da == db
    assert {"bboxes.json", "manifest.csv", "overlays.json", "images/s02_00000.png",
            "masks/s02_00005.png"} <= set(da)
    assert da["images/s02_00000.png"] != dc["images/s02_00000.png"]


def test_written_site_reads_back_through_scan_site(tmp_path: Path) -> None:
    site = pytest.importorskip("endofed.shared.data.site")
    summary = write_site(tmp_path / "s", n_images=12, seed=0, site_index=0, size=64)
    index = site.scan_site(tmp_path / "s")
    assert index.report.problems == []
    assert index.class_names == ["lesion"]
    assert len(index.records) == 12
    assert sum(len(r.labels) for r in index.records) == summary.n_lesions
    bboxes = json.loads((tmp_path / "s" / "bboxes.json").read_text())
    overlays = json.loads((tmp_path / "s" / "overlays.json").read_text())
    assert set(overlays) == set(bboxes)
    for r in index.records:
        entry = bboxes[r.image_path.stem]
        want = sorted((b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in entry["bbox"])
        assert sorted(tuple(int(v) for v in b) for b in r.boxes) == want
        mask = site.load_sample(r).mask
        assert _component_boxes(mask) == want  # the PNG mask is exact
        for o in overlays[r.image_path.stem]:
            assert o["type"] in OVERLAY_TYPES
    # Several frames share a patient, so patient-aware splits matter.
    groups = [r.group_id for r in index.records]
    assert len(set(groups)) == summary.n_patients < len(groups)


def test_write_sites_layout_and_per_site_devices(tmp_path: Path) -> None:
    sums = write_sites(tmp_path, sites=3, images_per_site=2, seed=1, size=48)
    assert [s.root.name for s in sums] == ["site_1", "site_2", "site_3"]
    assert len({s.profile for s in sums}) == 3
    info = json.loads((tmp_path / "site_2" / "synthetic.json").read_text())
    assert info["site_index"] == 1 and info["n_images"] == 2


def test_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from endofed.commands import synth

    parser = argparse.ArgumentParser()
    synth.register(parser.add_subparsers())
    args = parser.parse_args(["synth", str(tmp_path / "out"), "--sites", "2",
                              "--images-per-site", "3", "--seed", "4", "--size", "48",
                              "--classes", "polyp,cancer"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "2 synthetic sites" in out and "site_2" in out
    assert len(list((tmp_path / "out" / "site_2" / "images").glob("*.png"))) == 3
    bad = parser.parse_args(["synth", str(tmp_path / "x"), "--classes", "normal"])
    with pytest.raises(SystemExit):
        bad.func(bad)
