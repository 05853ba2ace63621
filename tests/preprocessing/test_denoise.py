import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio as psnr

from endofed.shared.data.synthetic import render_frame
from endofed.shared.preprocessing import PreprocessConfig, denoise, denoise_reference


def _clean(seed=0, size=128):
    return render_frame(np.random.default_rng(seed), size=size, overlays=False).image


def _noisy(img, seed=1, sigma=15.0, sp=0.02):
    rng = np.random.default_rng(seed)
    x = img.astype(np.float64) + rng.normal(0, sigma, img.shape)
    u = rng.random(img.shape[:2])
    x[u < sp / 2] = 0
    x[u > 1 - sp / 2] = 255
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(),
        PreprocessConfig(threshold_method="VisuShrink"),
        PreprocessConfig(threshold_mode="hard"),
        PreprocessConfig(median=False),
    ],
    ids=["paper", "visu", "hard", "wavelet-only"],
)
def test_denoise_raises_psnr(cfg):
    clean = _clean()
    noisy = _noisy(clean)
    out = denoise(noisy, cfg)
    assert out.dtype == np.uint8 and out.shape == clean.shape
    assert psnr(clean, out) > psnr(clean, noisy) + 3


@pytest.mark.parametrize(
    "mode,shape", [("periodization", (96, 128)), ("symmetric", (96, 128)), ("symmetric", (101, 77))]
)
def test_fast_equals_literal_reference(mode, shape):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    cfg = PreprocessConfig(wavelet_mode=mode)
    fast, ref = denoise(img, cfg), denoise_reference(img, cfg)
    assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1


def test_odd_sizes_are_mirror_padded_then_cropped():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (101, 77, 3), dtype=np.uint8)
    cfg = PreprocessConfig()
    fast = denoise(img, cfg)
    assert fast.shape == img.shape
    padded = np.pad(cv2.medianBlur(img, 5), ((0, 3), (0, 3), (0, 0)), mode="symmetric")
    ref = denoise_reference(padded, PreprocessConfig(median=False))[:101, :77]
    assert np.abs(fast.astype(int) - ref.astype(int)).max() <= 1


def test_stage_switches():
    img = _noisy(_clean())
    off = PreprocessConfig(median=False, wavelet=False)
    np.testing.assert_array_equal(denoise(img, off), img)
    med = denoise(img, PreprocessConfig(wavelet=False))
    assert not np.array_equal(med, img)


def test_config_validation():
    with pytest.raises(ValueError, match="median_size"):
        PreprocessConfig(median_size=4)
    with pytest.raises(ValueError, match="threshold_method"):
        PreprocessConfig(threshold_method="SureShrink")
    assert PreprocessConfig().fingerprint() != PreprocessConfig(version="x").fingerprint()
