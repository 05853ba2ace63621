"""``manifest.csv`` sites: one CSV row per image, or per box.

Columns (header names are case-insensitive; only ``image`` is required)::

    image        path of the image, relative to the manifest's folder (or absolute);
                 it must lie inside the site folder (or an ``allowed-roots`` folder of
                 ``endofed-site.toml``), else the row is reported and the file not read
    mask         optional binary mask (same size; lesion = above half the mask's own
                 maximum, so 0/1, 0/255 and noisy JPEG masks work); same rule for paths
    label        class of the row's box, or of the mask's lesions; empty or "normal"
                 with no box and no mask means an image without lesion
    xmin, ymin, xmax, ymax
                 optional box in image pixels (all four or none); several rows with the
                 same ``image`` give several boxes
    morphology   optional, per box (e.g. sessile, pedunculated, flat)
    split        optional: train / val / test (honoured by ``split_records``)
    patient_id, lesion_id
                 optional grouping keys so a patient never lands on two split sides

Image-level fields (mask, split, patient_id, lesion_id) come from the image's first
row that fills them. When an image has no box row, boxes are derived from its mask.
Rows naming the same file (``a.png`` and ``./a.png``) belong to one image. A UTF-8
byte-order mark (as Excel writes) is ignored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..sample import DataReport, SiteIndex
from ._base import (
    MANIFEST_NAME,
    Candidate,
    OutsideSiteError,
    SiteDataError,
    SitePaths,
    build_index,
    clean_str,
    normalize_split,
    read_manifest,
)

log = logging.getLogger(__name__)

BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")


def _first(rows: list[dict], key: str) -> str | None:
    for r in rows:
        v = clean_str(r.get(key))
        if v is not None:
            return v
    return None


def scan_manifest(
    root: Path,
    *,
    site: str | None = None,
    class_names: list[str] | None = None,
    manifest: Path | None = None,
) -> SiteIndex:
    """Scan a folder described by a manifest CSV (see module docstring)."""
    root = Path(root)
    path = Path(manifest) if manifest is not None else root / MANIFEST_NAME
    if not path.is_file():
        raise SiteDataError(f"{root}: no {path.name} found for the manifest layout")
    paths = SitePaths.for_site(root)
    report = DataReport(root=str(root), layout="manifest")
    df = read_manifest(path, report)
    if df is None:
        raise SiteDataError(f"{path}: {report.problems[-1].reason}")
    base = path.parent
    has_boxes = all(c in df.columns for c in BOX_COLUMNS)
    # rows grouped by the file they name: (shown name, path, [(line, row), ...])
    rows_by_image: dict[str, tuple[str, Path, list[tuple[int, dict]]]] = {}
    for i, row in enumerate(df.to_dict("records")):
        image = clean_str(row.get("image"))
        if image is None:
            report.add_problem(f"{path}:{i + 2}", "row without an image")
            continue
        try:
            img_path = paths.locate(base, image, "image")
        except OutsideSiteError as exc:  # reported, never opened
            report.images_found += 1
            report.add_problem(f"{path.name}:{i + 2}", str(exc))
            log.warning("skipped %s", report.problems[-1])
            continue
        key = os.path.realpath(img_path)
        rows_by_image.setdefault(key, (image, img_path, []))[2].append((i + 2, row))

    candidates: list[Candidate] = []
    for image, img_path, numbered in rows_by_image.values():
        lines = ",".join(str(n) for n, _ in numbered)
        rows = [r for _, r in numbered]

        def skip(reason: str, where: str | Path = f"{path.name}:{lines}") -> None:
            report.images_found += 1
            report.add_problem(where, reason)
            log.warning("skipped %s", report.problems[-1])

        if not img_path.exists():  # a FIFO or folder is reported when it is read
            skip(f"image file not found: {image}")
            continue
        mask = _first(rows, "mask")
        try:
            mask_path = paths.locate(base, mask, "mask") if mask else None
        except OutsideSiteError as exc:
            skip(str(exc))
            continue
        if mask_path is not None and not mask_path.exists():
            skip(f"mask file not found: {mask}")
            continue
        morphology = _first(rows, "morphology") or ""
        cand = Candidate(
            image_path=img_path,
            mask_path=mask_path,
            label=_first(rows, "label"),
            morphology=morphology,
            patient_id=_first(rows, "patient_id"),
            lesion_id=_first(rows, "lesion_id"),
            split=normalize_split(_first(rows, "split")),
        )
        if has_boxes:
            try:
                boxes, labels, morphs = _boxes(rows)
            except ValueError as exc:
                skip(str(exc))
                continue
            if len(boxes):
                cand.boxes = boxes
                cand.box_labels = labels
                cand.box_morphologies = morphs
        if cand.boxes is None and cand.mask_path is None and cand.label:
            # an image-level label without box or mask: fine only for "normal" images
            if cand.label.lower() != "normal":
                skip(f"label {cand.label!r} given without a box or a mask")
                continue
        if cand.label and cand.label.lower() == "normal":
            cand.label = None
        candidates.append(cand)
    return build_index(root, "manifest", candidates, report, site=site, class_names=class_names,
                       paths=paths)


def _boxes(rows: list[dict]) -> tuple[np.ndarray, list[str], list[str]]:
    boxes, labels, morphs = [], [], []
    for r in rows:
        vals = [clean_str(r.get(c)) for c in BOX_COLUMNS]
        if all(v is None for v in vals):
            continue
        if any(v is None for v in vals):
            raise ValueError(f"incomplete box {vals} (need xmin, ymin, xmax, ymax)")
        try:
            boxes.append([float(v) for v in vals])
        except ValueError as exc:
            raise ValueError(f"non-numeric box {vals}") from exc
        labels.append(clean_str(r.get("label")) or "lesion")
        morphs.append(clean_str(r.get("morphology")) or "")
    return np.asarray(boxes, np.float32).reshape(-1, 4), labels, morphs
