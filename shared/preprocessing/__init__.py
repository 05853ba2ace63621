"""Site preprocessing (paper 2.1.2): overlay detection, crop, median + Sym4 denoising, cache."""

from endofed.shared.preprocessing.cache import SiteCache, SiteReport, cached_loader, preprocess_site
from endofed.shared.preprocessing.config import PIPELINE_VERSION, PreprocessConfig
from endofed.shared.preprocessing.crop import CropBox, apply_crop, find_crop, inpaint_text
from endofed.shared.preprocessing.denoise import denoise, denoise_reference, wavelet_denoise
from endofed.shared.preprocessing.overlay import (
    OVERLAY_TYPES,
    ClassicalDetector,
    OverlayBox,
    OverlayDetection,
    available_detectors,
    get_detector,
    register_detector,
)
from endofed.shared.preprocessing.pipeline import PreprocessInfo, preprocess_sample

__all__ = [
    "OVERLAY_TYPES",
    "PIPELINE_VERSION",
    "ClassicalDetector",
    "CropBox",
    "OverlayBox",
    "OverlayDetection",
    "SiteCache",
    "SiteReport",
    "PreprocessConfig",
    "PreprocessInfo",
    "apply_crop",
    "available_detectors",
    "cached_loader",
    "denoise",
    "denoise_reference",
    "find_crop",
    "get_detector",
    "inpaint_text",
    "preprocess_sample",
    "preprocess_site",
    "register_detector",
    "wavelet_denoise",
]
