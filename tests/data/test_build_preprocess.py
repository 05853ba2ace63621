"""Preprocessing runs transparently inside the dataset, through the site cache."""

import pytest

from endofed.shared.build import dataset_for, preprocess_config_for, sample_loader_for
from endofed.shared.config import EndoFedConfig
from endofed.shared.data.site import load_sample, scan_site
from endofed.shared.data.synthetic import write_site
from endofed.shared.preprocessing import OverlayDetection


def test_toggles_reach_the_pipeline_config():
    cfg = EndoFedConfig.from_mapping({"preprocess": True, "preprocess-wavelet": False,
                                      "preprocess-crop": False})
    p = preprocess_config_for(cfg)
    assert p.median and not p.wavelet and not p.crop
    off = EndoFedConfig.from_mapping({"preprocess": True, "preprocess-denoise": False})
    assert not preprocess_config_for(off).median and not preprocess_config_for(off).wavelet


def test_dataset_reads_through_the_cache(tmp_path):
    write_site(tmp_path / "site", n_images=3, seed=2, size=(128, 128))
    records = scan_site(tmp_path / "site").records
    cache = tmp_path / "cache"
    cfg = EndoFedConfig.from_mapping({"preprocess": True, "image-size": 64,
                                      "preprocess-cache-dir": str(cache)})
    assert sample_loader_for(EndoFedConfig()) is load_sample
    ds = dataset_for(records, cfg, train=False)
    first = [ds[i][0] for i in range(len(ds))]
    assert any(cache.rglob("*")), "nothing was cached"
    cached = sorted(p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file())
    again = dataset_for(records, cfg, train=False)
    second = [again[i][0] for i in range(len(again))]
    assert all((a == b).all() for a, b in zip(first, second))
    assert sorted(p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()) == cached


class FindsNothing:
    """An overlay detector that finds no overlays (nothing is cropped)."""

    fingerprint = "finds-nothing:v1"

    def __call__(self, image):
        return OverlayDetection(boxes=[])


def test_the_detector_the_config_names_is_built_here_and_injectable(tmp_path):
    write_site(tmp_path / "site", n_images=1, seed=2, size=(96, 96))
    (record,) = scan_site(tmp_path / "site").records
    base = {"preprocess": True, "preprocess-cache-dir": str(tmp_path / "cache")}
    learned = EndoFedConfig.from_mapping({**base, "preprocess-detector": "learned"})
    # "learned" reaches the learned detector, which needs its weights file
    with pytest.raises(ValueError, match="detector_path"):
        sample_loader_for(learned)
    # an unknown name is refused by the config itself, before any image is read
    with pytest.raises(ValueError, match="'preprocess-detector': unknown 'nope'"):
        EndoFedConfig.from_mapping({**base, "preprocess-detector": "nope"})
    # an injected detector is used (and keys the cache apart from the default one)
    classical = sample_loader_for(EndoFedConfig.from_mapping(base))(record)
    injected = sample_loader_for(learned, detector=FindsNothing())(record)
    assert injected.image.shape == (96, 96, 3) != classical.image.shape
