"""Median + Sym4 wavelet denoising (paper section 2.1.2).

Paper sequence: 5x5 median filter; Sym4 wavelet decomposition; median filtering of
the decomposition coefficients; reconstruction; wavelet-threshold denoising of the
reconstruction (noise sigma from the finest diagonal band, MAD / 0.6745).

:func:`denoise` runs it on all three channels at once (``axes=(0, 1)``), with OpenCV
median filters on the ``float32`` bands and vectorised thresholds. With the default
``periodization`` mode the orthogonal Sym4 transform is exactly invertible, so
"reconstruct, then decompose again for thresholding" is the identity and is skipped:
one decomposition and one reconstruction do the whole wavelet stage. Sides that are
not multiples of ``2**levels`` are mirror-padded first (periodization would otherwise
pad them itself and lose orthogonality). Other modes are not orthogonal at the
borders, so there the second decomposition is done as written.
:func:`denoise_reference` is the literal, per-channel version (used to test the fast
one and as the benchmark's naive baseline).
"""

from __future__ import annotations

import cv2
import numpy as np
import pywt
from scipy import ndimage

from endofed.shared.preprocessing.config import PreprocessConfig

_MAD_TO_SIGMA = 0.6745


def median_filter(image: np.ndarray, size: int = 5) -> np.ndarray:
    """Median filter of a uint8 image (OpenCV, all channels)."""
    return cv2.medianBlur(image, size)


def _median_band(band: np.ndarray, size: int) -> np.ndarray:
    """Median filter of one (C, h, w) float32 band; OpenCV per plane, scipy when tiny."""
    if size == 0:
        return band
    h, w = band.shape[1:]
    if h >= size and w >= size:
        return np.stack([cv2.medianBlur(np.ascontiguousarray(p), size) for p in band])
    return ndimage.median_filter(band, size=(1, size, size), mode="reflect")


def _thresholds(
    bands: np.ndarray, sigma: np.ndarray, method: str, n_pixels: int
) -> np.ndarray:
    """Per-channel threshold (C, 1, 1) for one band (C, h, w) given noise sigma (C,)."""
    if method == "VisuShrink":
        return (sigma * np.sqrt(2.0 * np.log(n_pixels)))[:, None, None]
    var_y = np.mean(np.square(bands, dtype=np.float64), axis=(1, 2))
    sigma_x = np.sqrt(np.maximum(var_y - sigma**2, 0.0))
    with np.errstate(divide="ignore"):
        t = np.where(
            sigma_x > 0, sigma**2 / np.maximum(sigma_x, 1e-12), np.abs(bands).max(axis=(1, 2))
        )
    return t[:, None, None]


def _shrink(band: np.ndarray, t: np.ndarray, mode: str) -> np.ndarray:
    t = t.astype(np.float32)
    if mode == "soft":
        return np.sign(band) * np.maximum(np.abs(band) - t, 0.0)
    return np.where(np.abs(band) > t, band, 0.0).astype(np.float32)


def estimate_sigma(finest_diagonal: np.ndarray) -> np.ndarray:
    """Per-channel noise sigma from the finest diagonal band (C, h, w): MAD / 0.6745."""
    flat = np.abs(finest_diagonal).reshape(len(finest_diagonal), -1)
    return np.median(flat, axis=1).astype(np.float64) / _MAD_TO_SIGMA


def wavelet_denoise(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """The wavelet stage on a uint8 RGB image: coefficient median + threshold (fast)."""
    h, w = image.shape[:2]
    wavelet = pywt.Wavelet(config.wavelet_name)
    level = min(config.wavelet_levels, pywt.dwt_max_level(min(h, w), wavelet.dec_len))
    if level < 1:
        return image
    step = 2**level
    ph, pw = (-h) % step, (-w) % step
    if config.wavelet_mode == "periodization" and (ph or pw):
        # mirror-pad to a multiple of 2**level so the fast orthogonal path applies
        padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
        return wavelet_denoise(padded, config)[:h, :w]
    # channels first: the transforms then run along contiguous rows (faster than axes=(0, 1))
    x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    axes = (1, 2)
    coeffs = pywt.wavedec2(x, wavelet, mode=config.wavelet_mode, level=level, axes=axes)
    details = [
        tuple(_median_band(b, config.coeff_median_size) for b in lvl) for lvl in coeffs[1:]
    ]
    if config.wavelet_mode != "periodization":
        # not orthogonal at the borders: reconstruct and decompose again, as in the paper
        rec = pywt.waverec2([coeffs[0], *details], wavelet, mode=config.wavelet_mode, axes=axes)
        rec = rec[:, :h, :w]
        coeffs = pywt.wavedec2(rec, wavelet, mode=config.wavelet_mode, level=level, axes=axes)
        details = [tuple(lvl) for lvl in coeffs[1:]]
    sigma = estimate_sigma(details[-1][2])
    n = h * w
    out = [coeffs[0]]
    for lvl in details:
        out.append(
            tuple(
                _shrink(
                    b,
                    config.threshold_scale * _thresholds(b, sigma, config.threshold_method, n),
                    config.threshold_mode,
                )
                for b in lvl
            )
        )
    rec = pywt.waverec2(out, wavelet, mode=config.wavelet_mode, axes=axes)[:, :h, :w]
    return np.ascontiguousarray(np.clip(np.rint(rec), 0, 255).astype(np.uint8).transpose(1, 2, 0))


def denoise(image: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """Median filter then wavelet stage, as switched on in ``config`` (uint8 in, uint8 out)."""
    config = config or PreprocessConfig()
    out = image
    if config.median:
        out = median_filter(out, config.median_size)
    if config.wavelet:
        out = wavelet_denoise(out, config)
    return out


def denoise_reference(image: np.ndarray, config: PreprocessConfig | None = None) -> np.ndarray:
    """Literal per-channel implementation of the paper's sequence (slow; for checks).

    Median 5x5 -> per channel: decompose, scipy median on each detail band,
    reconstruct, decompose again, ``pywt.threshold`` band by band, reconstruct.
    """
    config = config or PreprocessConfig()
    out = cv2.medianBlur(image, config.median_size) if config.median else image
    if not config.wavelet:
        return out
    h, w = image.shape[:2]
    wavelet = pywt.Wavelet(config.wavelet_name)
    level = min(config.wavelet_levels, pywt.dwt_max_level(min(h, w), wavelet.dec_len))
    mode = config.wavelet_mode
    channels = []
    for c in range(image.shape[2]):
        x = out[..., c].astype(np.float64)
        coeffs = pywt.wavedec2(x, wavelet, mode=mode, level=level)
        new = [coeffs[0]]
        for lvl in coeffs[1:]:
            bands = []
            for band in lvl:
                size = config.coeff_median_size
                if size:
                    band = ndimage.median_filter(band, size=size, mode="reflect")
                bands.append(band)
            new.append(tuple(bands))
        rec = pywt.waverec2(new, wavelet, mode=mode)[:h, :w]
        coeffs = pywt.wavedec2(rec, wavelet, mode=mode, level=level)
        sigma = np.median(np.abs(coeffs[-1][2])) / _MAD_TO_SIGMA
        thr = [coeffs[0]]
        for lvl in coeffs[1:]:
            bands = []
            for band in lvl:
                if config.threshold_method == "VisuShrink":
                    t = sigma * np.sqrt(2.0 * np.log(h * w))
                else:
                    sigma_x = np.sqrt(max(float(np.mean(band**2)) - sigma**2, 0.0))
                    t = sigma**2 / sigma_x if sigma_x > 0 else float(np.abs(band).max())
                t *= config.threshold_scale
                bands.append(pywt.threshold(band, t, mode=config.threshold_mode))
            thr.append(tuple(bands))
        channels.append(pywt.waverec2(thr, wavelet, mode=mode)[:h, :w])
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
