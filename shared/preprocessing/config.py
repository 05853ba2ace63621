"""Configuration of the site preprocessing pipeline (paper section 2.1.2)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Bump whenever the algorithms change in a way that changes their output: it is part
# of every cache key, so a new version never reuses results of an old one.
PIPELINE_VERSION = "1.1.0"

THRESHOLD_MODES = ("soft", "hard")
THRESHOLD_METHODS = ("BayesShrink", "VisuShrink")


@dataclass(frozen=True)
class PreprocessConfig:
    """Per-stage switches and parameters of :func:`shared.preprocessing.preprocess_sample`.

    Stages run in order: overlay detection, crop (plus inpainting of burnt-in text
    left inside the crop), 5x5 median filter, Sym4 wavelet stage (median filtering of
    the detail coefficients, then wavelet-threshold denoising).
    """

    # overlay detection
    detect_overlays: bool = True
    detector: str = "classical"
    detector_path: str | None = None  # weights file for the "learned" detector
    dark_threshold: int = 30  # max(R, G, B) below this is "near black"
    # crop
    crop: bool = True
    border_penalty: float = 3.0  # cost of keeping one border pixel vs gain of one content pixel
    crop_grid: int = 96  # the crop search runs on a grid of this many cells (longest side)
    inpaint_text: bool = True
    inpaint_radius: int = 3
    # denoising
    median: bool = True
    median_size: int = 5
    wavelet: bool = True
    wavelet_name: str = "sym4"
    wavelet_levels: int = 2
    wavelet_mode: str = "periodization"
    coeff_median_size: int = 3  # median filter on each detail band (0 = off)
    threshold_mode: str = "soft"
    threshold_method: str = "BayesShrink"
    threshold_scale: float = 1.0  # multiplies the threshold of every band
    version: str = PIPELINE_VERSION

    def __post_init__(self) -> None:
        if self.median_size < 3 or self.median_size % 2 == 0:
            raise ValueError(f"median_size must be an odd number >= 3, got {self.median_size}")
        if self.coeff_median_size not in (0, 3, 5):
            raise ValueError(
                f"coeff_median_size must be 0, 3 or 5, got {self.coeff_median_size}"
            )
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(
                f"threshold_mode must be one of {THRESHOLD_MODES}, got {self.threshold_mode!r}"
            )
        if self.threshold_method not in THRESHOLD_METHODS:
            raise ValueError(
                f"threshold_method must be one of {THRESHOLD_METHODS}, "
                f"got {self.threshold_method!r}"
            )
        if self.wavelet_levels < 1:
            raise ValueError(f"wavelet_levels must be >= 1, got {self.wavelet_levels}")
        if self.border_penalty < 0:
            raise ValueError(f"border_penalty must be >= 0, got {self.border_penalty}")
        if self.crop_grid < 16:
            raise ValueError(f"crop_grid must be >= 16, got {self.crop_grid}")

    @property
    def denoise(self) -> bool:
        return self.median or self.wavelet

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_section(cls, p: Any) -> PreprocessConfig:
        """The pipeline a config's ``preprocess-*`` keys describe
        (:class:`~endofed.shared.config.sections.PreprocessConfigRef`)."""
        return cls(
            detect_overlays=p.preprocess_crop or p.preprocess_inpaint,
            detector=p.preprocess_detector,
            crop=p.preprocess_crop,
            inpaint_text=p.preprocess_inpaint,
            median=p.preprocess_denoise and p.preprocess_median,
            wavelet=p.preprocess_denoise and p.preprocess_wavelet,
        )

    @classmethod
    def from_record(cls, record: dict, *, origin: str = "") -> PreprocessConfig:
        """Rebuild from :meth:`to_dict` output (a checkpoint's record); unknown keys are
        an error naming ``origin``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"{origin or 'preprocessing record'}: unknown preprocessing "
                             f"setting(s) {unknown}")
        return cls(**record)

    def fingerprint(self) -> str:
        """Stable hash of every field (the version included): part of cache keys."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.blake2b(blob, digest_size=8).hexdigest()
