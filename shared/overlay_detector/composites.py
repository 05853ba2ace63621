"""Training data of the learned overlay detector: overlays composited onto overlay-free frames.

Backgrounds are real frames from a folder or synthetic frames rendered with
``overlays=False``; the synthetic generator's overlay renderer
(:func:`~endofed.shared.data.synthetic.composite_overlays`) draws border, panel, text
and instrument on top in :data:`COMPOSITE_STYLE`, so every box and type is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from endofed.shared.data.dataset import DetectionDataset
from endofed.shared.data.sample import Sample, SampleMeta, SampleRecord
from endofed.shared.data.synthetic import (
    Composite,
    OverlayStyle,
    composite_overlays,
    device_profile_for_site,
    render_frame,
)
from endofed.shared.data.transforms import build_transforms

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

#: Wider than any synthetic site, so the detector sees many processors' layouts: both
#: field-of-view shapes, wide borders, panels with a scope diagram, larger text in
#: several grey levels and stroke widths, more instruments. Border strips thinner than
#: 3 % and instruments smaller than 4 % of the side are drawn but not labelled.
COMPOSITE_STYLE = OverlayStyle(
    fov_shapes=("octagon", "circle"),
    fov_left=(0.06, 0.22),
    fov_right=(0.0, 0.12),
    fov_vertical=(0.0, 0.08),
    octagon_cut=(0.12, 0.26),
    circle_radius=(0.98, 1.1),
    min_border=0.03,
    panel_probability=0.5,
    panel_width=(0.18, 0.32),
    panel_height=(0.2, 0.34),
    panel_graphics_probability=0.5,
    text_height=(0.03, 0.05),
    text_stroke=0.1,
    text_level=(170 / 255, 1.0),
    text_spacing=(1.7, 2.2),
    text_left=(0.005, 0.03),
    text_top=(0.07, 0.14),
    device_names=("OLYMPUS", "FUJINON", "PENTAX", "ENDO-VX", "LUMA"),
    tube_probability=0.45,
    tube_width=(0.07, 0.13),
    tube_length=(0.22, 0.4),
    tube_entry=0.5,
    tube_colour=(150 / 255, 158 / 255, 168 / 255),
    tube_brightness=(0.8, 1.15),
    min_tube=0.04,
)


def list_backgrounds(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted); raises when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"background folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"background folder {folder} holds no images {IMAGE_EXTENSIONS}")
    return files


class BackgroundFrames:
    """Overlay-free frames of side ``size``: files from ``folder`` (cycled, resized), or
    synthetic clean frames through the four vendor profiles when ``folder`` is ``None``."""

    def __init__(self, folder: str | Path | None, *, seed: int, size: int) -> None:
        self.files = list_backgrounds(folder) if folder is not None else []
        self.seed = seed
        self.size = size

    def __call__(self, index: int) -> np.ndarray:
        if not self.files:
            rng = np.random.default_rng([self.seed, 7, index])
            profile = device_profile_for_site(index % 4, seed=self.seed)
            return render_frame(rng, size=self.size, profile=profile, overlays=False).image
        path = self.files[index % len(self.files)]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read background image {path}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_AREA)


def make_composites(
    n_images: int,
    *,
    backgrounds: str | Path | None = None,
    size: int = 256,
    seed: int = 0,
    style: OverlayStyle = COMPOSITE_STYLE,
) -> list[Composite]:
    """``n_images`` composites of side ``size`` (deterministic in ``seed``)."""
    frames = BackgroundFrames(backgrounds, seed=seed, size=size)
    return [
        composite_overlays(np.random.default_rng([seed, 11, i]), frames(i), style=style)
        for i in range(n_images)
    ]


class _CompositeLoader:
    """``record -> Sample`` for :class:`DetectionDataset` over in-memory composites."""

    def __init__(self, composites: Sequence[Composite]) -> None:
        self.composites = list(composites)

    def __call__(self, record: SampleRecord) -> Sample:
        c = self.composites[int(record.image_path.name)]
        return Sample(image=c.image, mask=c.overlay_mask, boxes=c.boxes, labels=c.labels,
                      meta=record.meta)


def composite_dataset(
    composites: Sequence[Composite], *, image_size: int, train: bool, max_boxes: int = 16
) -> DetectionDataset:
    """A :class:`DetectionDataset` over composites (the segmentation target is the
    border + panel mask). Training augmentation is limited to flips and colour
    jitter: rotation and zoom-out would paint grey canvas that is neither border nor
    content."""
    records = []
    for i, c in enumerate(composites):
        h, w = c.image.shape[:2]
        records.append(SampleRecord(
            image_path=Path(str(i)), mask_path=None, height=h, width=w, boxes=c.boxes,
            labels=c.labels, meta=SampleMeta(source=f"composite-{i}"),
        ))
    transform = build_transforms(
        image_size, train=train, vflip=0.0, rotation=0.0, zoom_out_p=0.0, zoom_in_p=0.0,
    )
    return DetectionDataset(
        records, image_size=image_size, train=train, max_boxes=max_boxes,
        morphology_names=[], transform=transform, loader=_CompositeLoader(composites),
        work_scale=1.0,
    )
