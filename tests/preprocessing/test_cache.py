"""The content-addressed site cache: hits, invalidation (files, pipeline, detector)."""

import cv2
import numpy as np
import pytest

from endofed.shared.data.dataset import DetectionDataset
from endofed.shared.data.site import load_sample, scan_site
from endofed.shared.preprocessing import (
    OverlayDetection,
    PreprocessConfig,
    SiteCache,
    cached_loader,
    preprocess_sample,
)

from .conftest import FindsNothing

FAST = PreprocessConfig(wavelet_levels=1)


def test_cache_hit_and_same_result(site, tmp_path):
    index = scan_site(site)
    cache = SiteCache(tmp_path / "cache", FAST)
    first = [cache.get(r)[0] for r in index.records]
    assert (cache.computed, cache.hits) == (6, 0)
    again = SiteCache(tmp_path / "cache", FAST)  # a new round, a new process
    second = [again.get(r)[0] for r in index.records]
    assert (again.computed, again.hits) == (0, 6)
    for a, b, rec in zip(first, second, index.records):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        # and the cached result is what the pipeline computes
        direct, _ = preprocess_sample(load_sample(rec), FAST)
        np.testing.assert_array_equal(direct.image, b.image)


def test_cache_invalidated_by_file_change_and_version(site, tmp_path):
    index = scan_site(site)
    rec = index.records[0]
    cache = SiteCache(tmp_path / "cache", FAST)
    cache.get(rec)
    img = cv2.imread(str(rec.image_path))
    img[0:5, 0:5] = 255 - img[0:5, 0:5]
    cv2.imwrite(str(rec.image_path), img)
    cache.get(rec)
    assert cache.computed == 2  # changed content, new key
    cache.get(rec)
    assert (cache.computed, cache.hits) == (2, 1)
    bumped = SiteCache(tmp_path / "cache", PreprocessConfig(wavelet_levels=1, version="next"))
    bumped.get(rec)
    assert bumped.computed == 1 and bumped.hits == 0


def test_cache_key_changes_with_the_detector(site, tmp_path):
    rec = scan_site(site).records[0]
    classical = SiteCache(tmp_path / "cache", FAST)
    other = SiteCache(tmp_path / "cache", FAST, detector=FindsNothing())
    assert classical.key(rec) != other.key(rec)
    cropped, info = classical.get(rec)
    full, other_info = other.get(rec)
    assert (other.computed, other.hits) == (1, 0)  # never the classical detector's entry
    assert info.crop_box != other_info.crop_box == (0, 0, rec.width, rec.height)
    assert cropped.image.shape != full.image.shape
    again = SiteCache(tmp_path / "cache", FAST, detector=FindsNothing())
    np.testing.assert_array_equal(again.get(rec)[0].image, full.image)
    assert (again.computed, again.hits) == (0, 1)
    # without overlay detection no detector takes part in the key
    off = PreprocessConfig(wavelet_levels=1, crop=False, inpaint_text=False,
                           detect_overlays=False)
    assert (SiteCache(tmp_path / "c", off).key(rec)
            == SiteCache(tmp_path / "c", off, detector=FindsNothing()).key(rec))


def test_a_detector_the_pipeline_does_not_build_must_be_passed_in(site, tmp_path):
    learned = PreprocessConfig(detector="learned", detector_path=str(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match="'learned'.*overlay_detector_for"):
        SiteCache(tmp_path / "cache", learned)
    with pytest.raises(TypeError, match="not an OverlayDetector"):
        SiteCache(tmp_path / "cache", FAST, detector=lambda image: OverlayDetection([]))
    rec = scan_site(site).records[0]
    _, info = SiteCache(tmp_path / "cache", learned, detector=FindsNothing()).get(rec)
    assert info.crop_box == (0, 0, rec.width, rec.height)


def test_cached_loader_plugs_into_dataset(site, tmp_path):
    index = scan_site(site)
    cache = SiteCache(tmp_path / "cache", FAST)
    ds = DetectionDataset(index.records, image_size=64, train=False, loader=cached_loader(cache))
    item = ds[0]
    assert item[0].shape == (3, 64, 64)
    assert cache.computed == 1


def test_unreadable_file_after_scan_is_counted(site, tmp_path):
    index = scan_site(site)
    index.records[0].image_path.write_bytes(b"\x89PNG truncated")
    cache = SiteCache(tmp_path / "cache", FAST)
    with pytest.raises(Exception, match="decodable|PNG|image"):
        cache.get(index.records[0])
    assert cache.computed == 0
