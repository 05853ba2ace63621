"""Site preprocessing (paper 2.1.2): overlay detection, crop, median + Sym4 denoising, cache.

The overlay detector is a part of the pipeline (``detector=``); the classical one is
the default. The learned detector is in :mod:`endofed.shared.overlay_detector`.
"""

from endofed.shared.preprocessing.cache import SiteCache, cached_loader
from endofed.shared.preprocessing.classical_detector import (
    CLASSICAL,
    ClassicalDetector,
    default_detector,
)
from endofed.shared.preprocessing.config import PIPELINE_VERSION, PreprocessConfig
from endofed.shared.preprocessing.crop import CropBox, apply_crop, find_crop, inpaint_text
from endofed.shared.preprocessing.denoise import denoise, denoise_reference, wavelet_denoise
from endofed.shared.preprocessing.overlay import (
    OVERLAY_TYPES,
    OverlayBox,
    OverlayDetection,
    OverlayDetector,
    masks_from_boxes,
)
from endofed.shared.preprocessing.pipeline import PreprocessInfo, preprocess_sample
from endofed.shared.preprocessing.whole_site import SiteReport, preprocess_site

__all__ = [
    "CLASSICAL",
    "OVERLAY_TYPES",
    "PIPELINE_VERSION",
    "ClassicalDetector",
    "CropBox",
    "OverlayBox",
    "OverlayDetection",
    "OverlayDetector",
    "PreprocessConfig",
    "PreprocessInfo",
    "SiteCache",
    "SiteReport",
    "apply_crop",
    "cached_loader",
    "default_detector",
    "denoise",
    "denoise_reference",
    "find_crop",
    "inpaint_text",
    "masks_from_boxes",
    "preprocess_sample",
    "preprocess_site",
    "wavelet_denoise",
]
