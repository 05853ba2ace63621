"""Seeded generator of endoscopy-like frames and of synthetic hospital sites.

EndoFed's embedded default data: everything (tests, the demo, simulations) runs without
real images. A frame is drawn in float32 RGB in layers, each from the frame's own
:class:`numpy.random.Generator`, so the same generator state always gives the same
pixels. One module per concept:

* :mod:`.tissue` -- pinkish-red mucosa (low-frequency colour noise, fine texture),
  folds, sometimes a dark lumen, vessel-like curves, vignetting, specular highlights;
* :mod:`.lesions` -- lesions of the morphologies in :data:`MORPHOLOGIES`, inside the
  frame's clinical box, never touching each other (one mask component per lesion);
* :mod:`.devices` -- a site's :class:`DeviceProfile` (channel gains, gamma,
  brightness, sharpness, sensor noise, and the layout of its overlays);
* :mod:`.field_of_view`, :mod:`.overlay_style`, :mod:`.overlays` -- the overlay
  renderer (black border outside a circular or octagonal field of view, lower-left
  panel, burnt-in text, instrument) with exact boxes; it also draws the training
  composites of the learned overlay detector;
* :mod:`.frame` -- :func:`render_frame`, which stacks the layers;
* :mod:`.writer` -- :func:`write_site` / :func:`write_sites`.

Conventions:

* Boxes are ``float32`` XYXY in pixels, pixel-edge aligned: a region covering columns
  ``x0..x1`` has ``xmin = x0`` and ``xmax = x1 + 1`` (as
  :func:`endofed.shared.data.layouts._base.boxes_from_mask`).
* Overlay ground truth (``overlay_boxes`` / ``overlay_types``): see :mod:`.overlays`.
* ``clinical_box``: an axis-aligned rectangle inside the field of view that intersects
  no overlay box; every lesion lies inside it.

:func:`write_site` writes a Kvasir-SEG style folder (``images/``, ``masks/``,
``bboxes.json``, ``manifest.csv``) plus ``overlays.json``; :func:`write_sites` writes
``site_1 ... site_N`` with one device profile per site.
"""

from endofed.shared.data.synthetic.devices import (
    VENDOR_PROFILES,
    DeviceProfile,
    apply_device,
    device_profile_for_site,
)
from endofed.shared.data.synthetic.field_of_view import (
    FieldOfView,
    clinical_box,
    draw_field_of_view,
)
from endofed.shared.data.synthetic.frame import SyntheticFrame, render_frame
from endofed.shared.data.synthetic.lesions import (
    MORPHOLOGIES,
    LesionConfig,
    PlacedLesions,
    place_lesions,
)
from endofed.shared.data.synthetic.overlay_style import FOV_SHAPES, OverlayStyle
from endofed.shared.data.synthetic.overlays import (
    OVERLAY_TYPES,
    Composite,
    OverlayPlan,
    TextLine,
    burn_in_overlays,
    composite_overlays,
    place_overlays,
)
from endofed.shared.data.synthetic.writer import SITE_LAYOUTS, SiteSummary, write_site, write_sites

__all__ = [
    "FOV_SHAPES",
    "MORPHOLOGIES",
    "OVERLAY_TYPES",
    "SITE_LAYOUTS",
    "VENDOR_PROFILES",
    "Composite",
    "DeviceProfile",
    "FieldOfView",
    "LesionConfig",
    "OverlayPlan",
    "OverlayStyle",
    "PlacedLesions",
    "SiteSummary",
    "SyntheticFrame",
    "TextLine",
    "apply_device",
    "burn_in_overlays",
    "clinical_box",
    "composite_overlays",
    "device_profile_for_site",
    "draw_field_of_view",
    "place_lesions",
    "place_overlays",
    "render_frame",
    "write_site",
    "write_sites",
]
