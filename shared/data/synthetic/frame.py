"""The frame generator: tissue, lesions, optics and burnt-in overlays, with exact ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from endofed.shared.data.sample import image_label
from endofed.shared.data.synthetic.devices import (
    DeviceProfile,
    apply_device,
    device_profile_for_site,
)
from endofed.shared.data.synthetic.field_of_view import (
    FieldOfView,
    clinical_box,
    draw_field_of_view,
)
from endofed.shared.data.synthetic.lesions import LesionConfig, place_lesions
from endofed.shared.data.synthetic.overlay_style import OverlayStyle
from endofed.shared.data.synthetic.overlays import burn_in_overlays, place_overlays
from endofed.shared.data.synthetic.raster import as_rgb, frame_shape
from endofed.shared.data.synthetic.tissue import draw_mucosa, draw_specular_highlights


@dataclass
class SyntheticFrame:
    """One rendered frame and its exact ground truth (conventions: the package docstring)."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    mask: np.ndarray  # bool (H, W), union of the lesion masks
    boxes: np.ndarray  # float32 (N, 4) XYXY, one per lesion
    labels: np.ndarray  # int64 (N,), 1..K
    morphologies: list[str]
    overlay_boxes: np.ndarray  # float32 (M, 4) XYXY
    overlay_types: list[str]
    clinical_box: np.ndarray  # float32 (4,) XYXY
    class_names: tuple[str, ...] = ("lesion",)

    @property
    def image_label(self) -> int:
        """Image-level class (label of the largest lesion, 0 when lesion-free)."""
        return image_label(self.boxes, self.labels)


def render_frame(
    rng: np.random.Generator,
    *,
    size: int | tuple[int, int] = (256, 256),
    profile: DeviceProfile | None = None,
    lesions: LesionConfig | None = None,
    overlays: bool = True,
    overlay_style: OverlayStyle | None = None,
    tissue_tint: Sequence[float] | None = None,
) -> SyntheticFrame:
    """Render one endoscopy-like frame and its exact ground truth.

    Layers, in drawing order: mucosa (with the field of view's vignetting), the
    instrument, lesions, specular highlights, the device profile, then the burnt-in
    black border, panel and text.

    Args:
        rng: the frame's random generator (the only source of randomness).
        size: ``(H, W)`` or a single side.
        profile: the device profile (default: :func:`device_profile_for_site` ``(0)``).
        lesions: which lesions to draw (default: one class ``"lesion"``, all
            morphologies, 25 % lesion-free frames).
        overlays: ``False`` draws a clean frame: the field of view fills the image and
            there is no text, panel or tube (like an already cropped frame).
        overlay_style: how the overlays look (default: ``profile.overlay_style()``).
        tissue_tint: per-channel factor on the mucosa colour (e.g. per patient).
    """
    h, w = frame_shape(size)
    profile = profile or device_profile_for_site(0)
    cfg = lesions or LesionConfig()
    style = overlay_style or profile.overlay_style()
    tint = np.asarray(tissue_tint if tissue_tint is not None else (1, 1, 1), np.float32)

    fov = draw_field_of_view(rng, h, w, style) if overlays else FieldOfView.full_frame(h, w)
    img, lumen, vignette = draw_mucosa(rng, fov, tint)
    # Decide the overlays first so that the clinical box avoids them.
    plan = place_overlays(rng, img, fov, style) if overlays else None
    clinical = clinical_box(fov, plan.boxes if plan is not None else [])
    placed = place_lesions(rng, img, clinical_box=clinical, lumen=lumen, config=cfg)
    draw_specular_highlights(rng, img, fov)
    img = cv2.multiply(img, as_rgb(vignette))
    img = apply_device(rng, img, profile)
    if plan is not None:
        img = burn_in_overlays(rng, img, plan)

    image = cv2.convertScaleAbs(np.clip(img, 0, 1), alpha=255.0)  # rounds, saturates
    return SyntheticFrame(
        image=image,
        mask=placed.mask,
        boxes=placed.boxes,
        labels=placed.labels,
        morphologies=placed.morphologies,
        overlay_boxes=np.asarray(plan.boxes if plan else [], np.float32).reshape(-1, 4),
        overlay_types=plan.types if plan else [],
        clinical_box=np.asarray(clinical, np.float32),
        class_names=tuple(cfg.class_names),
    )
