"""Kvasir-SEG style sites: ``images/``, ``masks/`` and an optional bounding-box JSON.

Folder::

    root/
      images/<stem>.{jpg,png,bmp,tif}     RGB frames
      masks/<stem>.{jpg,png,bmp,tif}      optional binary masks, same size (lesion = above
                                          half the mask's own maximum: 0/1, 0/255, JPEG)
      *bboxes*.json                       optional, {stem: {height, width,
                                          bbox: [{label, xmin, ymin, xmax, ymax}]}}
      manifest.csv                        optional metadata: image, mask, label,
                                          morphology, split, patient_id, lesion_id

Boxes come from the JSON when it has an entry for the stem, else from the mask's
connected components (labelled with the manifest ``label`` or ``"lesion"``).
Images without mask and without JSON boxes have no lesion. Masks and JSON entries are
matched by stem, so two images sharing a stem (``x.jpg`` and ``x.png``) that a mask or
JSON entry would match are both reported, not paired (a manifest ``mask`` column names
each image's mask explicitly). Manifest rows are matched by the image's path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

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
    group_by_stem,
    list_images,
    load_json,
    normalize_split,
    read_manifest,
)

log = logging.getLogger(__name__)


def _parse_bbox_entry(
    entry: Any,
) -> tuple[np.ndarray, list[str], tuple[int, int] | None, list[str]]:
    """One ``kavsir_bboxes.json`` value -> (boxes, labels, (H, W) or None, morphologies).

    A box may carry its own ``morphology``; boxes without one get ``""`` (then the
    manifest's per-image morphology applies to all of the image's boxes)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("bbox", []), list):
        raise ValueError("entry is not {height, width, bbox: [...]}")
    boxes, labels, morphs = [], [], []
    for b in entry.get("bbox", []):
        try:
            boxes.append([float(b[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"box {b!r} lacks numeric xmin/ymin/xmax/ymax") from exc
        labels.append(clean_str(b.get("label")) or "lesion")
        morphs.append(clean_str(b.get("morphology")) or "")
    size = None
    if "height" in entry and "width" in entry:
        try:
            size = (int(entry["height"]), int(entry["width"]))
        except (TypeError, ValueError) as exc:
            raise ValueError("height/width are not integers") from exc
    return np.asarray(boxes, np.float32).reshape(-1, 4), labels, size, morphs


def _load_bbox_json(root: Path, report: DataReport) -> dict[str, Any]:
    entries: dict[str, Any] = {}
    for path in sorted(root.glob("*bboxes*.json")):
        data = load_json(path, report)
        if data is None:
            continue
        if not isinstance(data, dict):
            report.add_problem(path, "malformed bbox JSON: expected an object {stem: {...}}")
            log.warning("%s", report.problems[-1])
            continue
        for stem, entry in data.items():
            entries.setdefault(str(stem), (path, entry))
    return entries


def manifest_rows(
    root: Path, report: DataReport, paths: SitePaths, existing: set[Path] | None = None
) -> dict[Path, dict[str, str | None]]:
    """Per-image metadata from ``root/manifest.csv`` keyed by the image's real path.

    The first row of an image wins. Rows whose image lies outside ``paths`` or, when
    ``existing`` (real paths) is given, is not in it are reported as problems.
    """
    path = root / MANIFEST_NAME
    if not path.is_file():
        return {}
    df = read_manifest(path, report)
    if df is None:
        return {}
    out: dict[Path, dict[str, str | None]] = {}
    for i, row in enumerate(df.to_dict("records")):
        image = clean_str(row.get("image"))
        if image is None:
            report.add_problem(f"{path}:{i + 2}", "manifest row without an image")
            continue
        try:
            img_path = Path(os.path.realpath(paths.locate(root, image, "image")))
        except OutsideSiteError as exc:
            report.add_problem(f"{path}:{i + 2}", str(exc))
            log.warning("%s", report.problems[-1])
            continue
        if existing is not None and img_path not in existing:
            report.add_problem(f"{path}:{i + 2}", f"image file not found: {image}")
            log.warning("%s", report.problems[-1])
            continue
        out.setdefault(img_path, {k: clean_str(v) for k, v in row.items()})
    return out


def scan_kvasir(
    root: Path, *, site: str | None = None, class_names: list[str] | None = None
) -> SiteIndex:
    """Scan a Kvasir-SEG style folder (see module docstring)."""
    root = Path(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise SiteDataError(f"{root}: the Kvasir-SEG layout needs an images/ folder")
    paths = SitePaths.for_site(root)
    report = DataReport(root=str(root), layout="kvasir")
    images = list_images(images_dir, report)
    report.images_found = len(report.problems)  # image-named entries that are not files
    by_stem = group_by_stem(images)
    masks = group_by_stem(list_images(root / "masks", report))
    bboxes = _load_bbox_json(root, report)
    real = {img: Path(os.path.realpath(img)) for img in images}
    meta = manifest_rows(root, report, paths, existing=set(real.values()))

    def skip(img: Path, reason: str) -> None:
        report.images_found += 1
        report.add_problem(img, reason)
        log.warning("skipped %s", report.problems[-1])

    candidates: list[Candidate] = []
    for img in images:
        row = meta.get(real[img], {})
        twins = by_stem[img.stem]
        cand = Candidate(
            image_path=img,
            label=row.get("label"),
            morphology=row.get("morphology") or "",
            patient_id=row.get("patient_id"),
            lesion_id=row.get("lesion_id"),
            split=normalize_split(row.get("split")),
        )
        if row.get("mask"):
            try:
                cand.mask_path = paths.locate(root, row["mask"], "mask")
            except OutsideSiteError as exc:
                skip(img, f"{MANIFEST_NAME}: {exc}")
                continue
            if not cand.mask_path.exists():
                skip(img, f"mask file not found: {row['mask']}")
                continue
        elif img.stem in masks:
            found = masks[img.stem]
            if len(found) > 1:
                skip(img, f"ambiguous masks: {', '.join(m.name for m in found)} share the "
                          f"stem {img.stem!r}; keep one, or name the mask in {MANIFEST_NAME}")
                continue
            if len(twins) > 1:
                skip(img, f"ambiguous stem {img.stem!r}: masks/{found[0].name} would match "
                          f"{', '.join('images/' + t.name for t in twins)}; rename one, or "
                          f"name each image's mask in {MANIFEST_NAME}")
                continue
            cand.mask_path = found[0]
        if img.stem in bboxes and len(twins) > 1:
            skip(img, f"ambiguous stem {img.stem!r}: {bboxes[img.stem][0].name} entry "
                      f"{img.stem!r} would match {', '.join('images/' + t.name for t in twins)}"
                      "; rename one")
            continue
        if img.stem in bboxes:
            json_path, entry = bboxes[img.stem]
            try:
                cand.boxes, cand.box_labels, cand.expected_size, morphs = _parse_bbox_entry(
                    entry
                )
                if any(morphs):
                    cand.box_morphologies = [m or cand.morphology for m in morphs]
            except ValueError as exc:
                skip(img, f"{json_path.name}: {exc}")
                continue
        candidates.append(cand)
    return build_index(root, "kvasir", candidates, report, site=site, class_names=class_names,
                       paths=paths)
