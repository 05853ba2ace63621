"""One call that preprocesses a sample: overlays, crop + inpaint, denoise (paper 2.1.2)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from endofed.shared.data.sample import Sample
from endofed.shared.preprocessing.classical_detector import default_detector
from endofed.shared.preprocessing.config import PreprocessConfig
from endofed.shared.preprocessing.crop import CropBox, apply_crop, find_crop, inpaint_text
from endofed.shared.preprocessing.denoise import denoise
from endofed.shared.preprocessing.overlay import OverlayBox, OverlayDetector, masks_from_boxes


@dataclass
class PreprocessInfo:
    """What preprocessing did to one image (for reports; never leaves the site)."""

    original_size: tuple[int, int]  # (height, width)
    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the original image
    mask_kept_share: float  # share of lesion mask pixels kept by the crop (1.0 if none)
    overlays: list[OverlayBox] = field(default_factory=list)
    text_pixels_inpainted: int = 0
    overlay_share_before: float = 0.0  # share of non-content pixels in the original
    overlay_share_after: float = 0.0  # ... and inside the crop
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["overlays"] = [dataclasses.asdict(o) for o in self.overlays]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessInfo:
        d = dict(d)
        d["original_size"] = tuple(d["original_size"])
        d["crop_box"] = tuple(d["crop_box"])
        d["overlays"] = [
            OverlayBox(o["type"], tuple(o["xyxy"]), o["score"]) for o in d.get("overlays", [])
        ]
        return cls(**d)


def preprocess_sample(
    sample: Sample,
    config: PreprocessConfig | None = None,
    *,
    detector: OverlayDetector | None = None,
) -> tuple[Sample, PreprocessInfo]:
    """Preprocess image, mask and boxes together; returns the new sample and a report.

    ``detector`` finds the overlays (default: :func:`default_detector`, the classical
    one; a config naming another detector needs it passed in).
    """
    config = config or PreprocessConfig()
    image, mask, boxes = sample.image, sample.mask, sample.boxes
    h, w = image.shape[:2]
    timings: dict[str, float] = {}
    overlays: list[OverlayBox] = []
    crop = CropBox(0, 0, w, h)
    text_pixels = 0
    share_before = share_after = 0.0

    t = time.perf_counter()
    if config.detect_overlays and (config.crop or config.inpaint_text):
        detector = detector if detector is not None else default_detector(config)
        detection = detector(image)
        overlays = detection.boxes
        content, text = masks_from_boxes(detection, image)
        timings["detect"] = (time.perf_counter() - t) * 1e3
        share_before = 1.0 - float(content.mean())
        t = time.perf_counter()
        if config.crop:
            crop = find_crop(
                content, mask, boxes, border_penalty=config.border_penalty, grid=config.crop_grid
            )
        kept = content[crop.y0 : crop.y1, crop.x0 : crop.x1]
        share_after = 1.0 - float(kept.mean()) if kept.size else 0.0
        image, new_mask, boxes = apply_crop(image, mask, boxes, crop)
        if config.inpaint_text:
            text_in = text[crop.y0 : crop.y1, crop.x0 : crop.x1]
            text_pixels = int(text_in.sum())
            image = inpaint_text(image, text_in, config.inpaint_radius)
        timings["crop"] = (time.perf_counter() - t) * 1e3
    else:
        new_mask = mask
    total = int(mask.sum())
    kept_share = float(new_mask.sum()) / total if total else 1.0

    t = time.perf_counter()
    if config.denoise:
        image = denoise(image, config)
        timings["denoise"] = (time.perf_counter() - t) * 1e3

    out = Sample(
        image=np.ascontiguousarray(image),
        mask=np.ascontiguousarray(new_mask),
        boxes=boxes.astype(np.float32),
        labels=sample.labels.copy(),
        meta=sample.meta,
    )
    info = PreprocessInfo(
        original_size=(h, w),
        crop_box=crop.as_tuple(),
        mask_kept_share=kept_share,
        overlays=overlays,
        text_pixels_inpainted=text_pixels,
        overlay_share_before=share_before,
        overlay_share_after=share_after,
        timings_ms=timings,
    )
    return out, info
