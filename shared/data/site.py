"""Open a site folder: detect its layout, scan it, load samples, summarise it."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .layouts import LAYOUTS, SiteDataError, decode_segmentation, read_image, read_mask
from .layouts._base import (
    MANIFEST_NAME,
    SitePaths,
    list_images,
    load_json,
    manifest_header,
    missing_image_column,
)
from .layouts.coco import is_coco
from .layouts.dicom import has_dicom
from .layouts.manifest import BOX_COLUMNS
from .layouts.video import has_videos
from .sample import NORMAL_CLASS_NAME, Sample, SampleRecord, SiteIndex, image_label

log = logging.getLogger(__name__)

EXPECTED_LAYOUTS = (
    "expected one of: 'kvasir' (images/ [+ masks/ with the same stems] "
    "[+ *bboxes*.json] [+ manifest.csv]), 'coco' (a *.json with images/annotations/"
    "categories keys beside the images or an images/ folder), 'manifest' (manifest.csv "
    "with at least an 'image' column), 'dicom' (*.dcm files + masks/), 'video' "
    "(*.mp4/*.avi files + masks/)"
)

__all__ = ["SiteDataError", "detect_layout", "load_sample", "scan_site", "summarize"]


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root``: ``"coco"``, ``"manifest"`` or ``"kvasir"``.

    Order: a COCO JSON wins; a ``manifest.csv`` with box columns (or without an
    ``images/`` folder) means ``manifest``; an ``images/`` folder means ``kvasir``.
    Raises :class:`SiteDataError` naming the expected layouts otherwise, or naming the
    manifest when it is the only candidate but lacks its ``image`` column.
    """
    root = Path(root)
    if not root.is_dir():
        raise SiteDataError(f"{root}: not a directory")
    jsons = [p for p in sorted(root.glob("*.json")) if "bboxes" not in p.name.lower()]
    parsed = {p: load_json(p) for p in jsons}
    if any(is_coco(d) for d in parsed.values()):
        return "coco"
    manifest = root / MANIFEST_NAME
    has_images = bool(list_images(root / "images"))
    cols: list[str] = manifest_header(manifest) if manifest.is_file() else []
    if "image" in cols and (set(BOX_COLUMNS) <= set(cols) or not has_images):
        return "manifest"
    if has_images:
        if any(d is None for d in parsed.values()) and not (root / "masks").is_dir():
            return "coco"  # most likely a broken COCO export: let its scanner say why
        return "kvasir"
    if has_dicom(root):
        return "dicom"
    if has_videos(root):
        return "video"
    if any(d is None for d in parsed.values()):
        return "coco"
    if cols:
        raise SiteDataError(f"{manifest}: {missing_image_column(cols)}")
    raise SiteDataError(f"{root}: no usable site layout found; {EXPECTED_LAYOUTS}")


def scan_site(
    root: Path | str,
    layout: str = "auto",
    *,
    site: str | None = None,
    class_names: list[str] | None = None,
) -> SiteIndex:
    """Scan a site folder into a validated :class:`SiteIndex`.

    Args:
        root: the site folder.
        layout: ``"auto"`` (see :func:`detect_layout`), ``"kvasir"``, ``"coco"`` or
            ``"manifest"``.
        site: site name stored in each sample's meta (default: the folder name).
        class_names: fixed class order shared by the federation (labels ``1..K``);
            by default the sorted class names found in the data.

    Paths stay inside the site folder unless its ``endofed-site.toml`` lists
    ``allowed-roots`` (:class:`~shared.data.layouts._base.SitePaths`).

    Raises:
        SiteDataError: unknown layout, a bad ``endofed-site.toml``, or no usable image
            (the message lists the expected layouts and the first problems).
    """
    root = Path(root)
    if root.is_dir():
        SitePaths.for_site(root)  # a bad settings file is its own error, not a layout's
    if layout == "auto":
        layout = detect_layout(root)
        log.info("%s: detected layout %r", root, layout)
    if layout not in LAYOUTS:
        raise SiteDataError(f"unknown layout {layout!r}; {EXPECTED_LAYOUTS}")
    try:
        return LAYOUTS[layout](root, site=site, class_names=class_names)
    except SiteDataError as exc:
        raise SiteDataError(f"{exc}. ({EXPECTED_LAYOUTS})") from exc


def load_sample(record: SampleRecord) -> Sample:
    """Decode a record: RGB ``uint8`` image, boolean mask, copies of boxes/labels.

    Raises ``ValueError`` naming the file if it changed since the scan.
    """
    image = read_image(record.image_path)
    h, w = image.shape[:2]
    if (h, w) != (record.height, record.width):
        raise ValueError(
            f"{record.image_path}: image is now {w}x{h}, scanned as "
            f"{record.width}x{record.height}"
        )
    if record.mask_path is not None:
        mask = read_mask(record.mask_path)
        if mask.shape != (h, w):
            raise ValueError(f"{record.mask_path}: mask size differs from the image")
    elif record.segmentation:
        mask = decode_segmentation(record.segmentation, h, w)
    else:
        mask = np.zeros((h, w), dtype=bool)
    return Sample(
        image=image,
        mask=mask,
        boxes=record.boxes.astype(np.float32, copy=True).reshape(-1, 4),
        labels=record.labels.astype(np.int64, copy=True),
        meta=record.meta,
    )


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    a = np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max())}


def summarize(index: SiteIndex) -> dict[str, Any]:
    """JSON-ready summary of a scanned site (what ``endofed site check`` prints)."""
    recs = index.records
    names = index.class_names
    box_counts = Counter(int(lbl) for r in recs for lbl in r.labels)
    img_counts = Counter(image_label(r.boxes, r.labels) for r in recs)
    morph = Counter(m or "unknown" for r in recs for m in r.meta.morphologies)
    splits = Counter(r.meta.split or "unassigned" for r in recs)
    return {
        "root": str(index.root),
        "layout": index.report.layout,
        "images": index.report.images_found,
        "usable": len(recs),
        "boxes": int(sum(len(r.boxes) for r in recs)),
        "classes": {n: box_counts.get(i + 1, 0) for i, n in enumerate(names)},
        "image_labels": {
            NORMAL_CLASS_NAME: img_counts.get(0, 0),
            **{n: img_counts.get(i + 1, 0) for i, n in enumerate(names)},
        },
        "images_without_lesions": img_counts.get(0, 0),
        "images_with_masks": sum(1 for r in recs if r.mask_path or r.segmentation),
        "oversized": index.report.oversized,
        "sizes": {"height": _stats([r.height for r in recs]),
                  "width": _stats([r.width for r in recs])},
        "morphology": dict(sorted(morph.items())),
        "splits": dict(sorted(splits.items())),
        "groups": len({r.group_id for r in recs}),
        "problems": [{"path": p.path, "reason": p.reason} for p in index.report.problems],
    }
