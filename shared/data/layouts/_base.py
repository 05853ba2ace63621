"""Shared machinery for the layout scanners: decoding, validation, record building.

Every layout turns its annotation format into a list of :class:`Candidate` (paths plus
raw annotations in image pixels) and hands it to :func:`build_index`, which decodes
each image once, validates it (and its mask / boxes) and either produces a
:class:`~shared.data.sample.SampleRecord` or records a one-line problem.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ..sample import NORMAL_CLASS_NAME, DataReport, SampleMeta, SampleRecord, SiteIndex

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_LESION_LABEL = "lesion"
#: Boxes may overshoot the image by this many pixels; they are clipped. Beyond: rejected.
BOX_TOLERANCE_PX = 2.0
#: Mask components smaller than this fraction of the image area are noise, not lesions.
MIN_COMPONENT_FRACTION = 0.0005
MANIFEST_NAME = "manifest.csv"
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


class SiteDataError(ValueError):
    """A site folder (or file) that cannot be used at all."""


class ImageReadError(ValueError):
    """An image or mask file that cannot be decoded."""


@dataclass
class Candidate:
    """One image before validation, as a layout scanner found it.

    ``boxes`` is ``None`` when boxes must be derived from the mask; otherwise an
    ``(N, 4)`` XYXY array in image pixels with one ``box_labels`` / ``box_morphologies``
    entry per box. ``label``/``morphology`` are the image-level defaults used for
    mask-derived boxes.
    """

    image_path: Path
    mask_path: Path | None = None
    boxes: np.ndarray | None = None
    box_labels: list[str] = field(default_factory=list)
    box_morphologies: list[str] = field(default_factory=list)
    label: str | None = None
    morphology: str = ""
    patient_id: str | None = None
    lesion_id: str | None = None
    split: str | None = None
    segmentation: list | None = None
    expected_size: tuple[int, int] | None = None  # (H, W) claimed by the annotations


@dataclass
class _Checked:
    """Outcome of validating one candidate (labels still as names)."""

    candidate: Candidate
    height: int = 0
    width: int = 0
    boxes: np.ndarray | None = None
    label_names: list[str] = field(default_factory=list)
    morphologies: list[str] = field(default_factory=list)
    problem: str | None = None


# ----------------------------------------------------------------------------- decoding


def _check_bytes(path: Path, data: bytes) -> None:
    if len(data) == 0:
        raise ImageReadError("empty file")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        raise ImageReadError("truncated JPEG (no end-of-image marker)")


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB ``uint8 (H, W, 3)``; raise :class:`ImageReadError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot read file: {exc.strerror or exc}") from exc
    _check_bytes(path, data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageReadError("not a decodable image (corrupted or unsupported format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: Path) -> np.ndarray:
    """Decode a mask file to a boolean ``(H, W)`` array (``> 127``, robust to JPEG noise)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"cannot read mask: {exc.strerror or exc}") from exc
    _check_bytes(path, data)
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None or m.size == 0:
        raise ImageReadError("mask is not a decodable image")
    return m > 127


def boxes_from_mask(
    mask: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION
) -> np.ndarray:
    """XYXY boxes (``float32 (N, 4)``) of the mask's 8-connected components.

    Components smaller than ``min_fraction`` of the image area are ignored (specks).
    Boxes are pixel-edge aligned: a component covering columns ``x0..x1`` gives
    ``xmin = x0``, ``xmax = x1 + 1``.
    """
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if not m.any():
        return np.zeros((0, 4), np.float32)
    n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    min_area = max(1.0, min_fraction * m.shape[0] * m.shape[1])
    out = [
        (x, y, x + w, y + h)
        for x, y, w, h, area in stats[1:n]
        if area >= min_area
    ]
    return np.asarray(out, np.float32).reshape(-1, 4)


def validate_boxes(
    boxes: np.ndarray, height: int, width: int, tol: float = BOX_TOLERANCE_PX
) -> np.ndarray:
    """Clip boxes overshooting the image by ``<= tol`` px; raise ``ValueError`` otherwise."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise ValueError("box with non-finite coordinates")
    for x0, y0, x1, y1 in boxes:
        if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
            raise ValueError(
                f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}] outside the {width}x{height} image"
            )
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    for x0, y0, x1, y1 in clipped:
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"degenerate box [{x0:g}, {y0:g}, {x1:g}, {y1:g}]")
    return clipped


# ----------------------------------------------------------------------------- metadata


def clean_str(value: Any) -> str | None:
    """A manifest cell as a stripped string, ``None`` for empty / NaN."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    s = str(value).strip()
    return s or None


def normalize_split(value: Any) -> str | None:
    s = clean_str(value)
    if s is None:
        return None
    return SPLIT_ALIASES.get(s.lower(), s.lower())


def read_manifest(path: Path, report: DataReport) -> pd.DataFrame | None:
    """Read a manifest CSV as strings; record a problem and return ``None`` if unreadable."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:  # pandas raises several parser error types
        report.add_problem(path, f"unreadable CSV: {exc}".splitlines()[0])
        log.warning("%s", report.problems[-1])
        return None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "image" not in df.columns:
        report.add_problem(path, "manifest has no 'image' column")
        log.warning("%s", report.problems[-1])
        return None
    return df


def load_json(path: Path, report: DataReport | None = None) -> Any | None:
    """Parse a JSON file; on failure record a problem (if a report is given)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if report is not None:
            report.add_problem(path, f"malformed JSON: {exc}")
            log.warning("%s", report.problems[-1])
        return None


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted, case-insensitive extensions)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


# ----------------------------------------------------------------------------- building


def _check(cand: Candidate, mask_decoder: Callable[[Candidate, int, int], np.ndarray] | None):
    res = _Checked(cand)
    try:
        img = read_image(cand.image_path)
    except ImageReadError as exc:
        res.problem = str(exc)
        return res
    h, w = img.shape[:2]
    res.height, res.width = h, w
    if cand.expected_size is not None and tuple(cand.expected_size) != (h, w):
        eh, ew = cand.expected_size
        res.problem = f"annotation says {ew}x{eh} but the image is {w}x{h}"
        return res
    mask = None
    if cand.mask_path is not None:
        try:
            mask = read_mask(cand.mask_path)
        except ImageReadError as exc:
            res.problem = f"mask {cand.mask_path.name}: {exc}"
            return res
        if mask.shape != (h, w):
            res.problem = (
                f"mask {cand.mask_path.name} is {mask.shape[1]}x{mask.shape[0]} "
                f"but the image is {w}x{h}"
            )
            return res
    elif mask_decoder is not None and cand.segmentation:
        try:
            mask_decoder(cand, h, w)
        except Exception as exc:  # malformed polygons / RLE
            res.problem = f"bad segmentation: {exc}"
            return res
    if cand.boxes is not None:
        boxes = cand.boxes
        names = list(cand.box_labels)
        morph = list(cand.box_morphologies) or [cand.morphology] * len(boxes)
    else:
        boxes = boxes_from_mask(mask) if mask is not None else np.zeros((0, 4), np.float32)
        names = [cand.label or DEFAULT_LESION_LABEL] * len(boxes)
        morph = [cand.morphology] * len(boxes)
    if NORMAL_CLASS_NAME in names:
        res.problem = f"'{NORMAL_CLASS_NAME}' is reserved for images without lesions, not boxes"
        return res
    try:
        res.boxes = validate_boxes(boxes, h, w)
    except ValueError as exc:
        res.problem = str(exc)
        return res
    res.label_names = names
    res.morphologies = [m or "" for m in morph]
    return res


def build_index(
    root: Path,
    layout: str,
    candidates: Sequence[Candidate],
    report: DataReport,
    *,
    site: str | None = None,
    class_names: Sequence[str] | None = None,
    mask_decoder: Callable[[Candidate, int, int], np.ndarray] | None = None,
    workers: int | None = None,
) -> SiteIndex:
    """Validate candidates (decoding each image once) and build the :class:`SiteIndex`.

    ``class_names`` fixes the class order (labels ``1..K``) so several sites agree;
    boxes of other classes are then reported as problems. Without it the classes
    are the sorted names found in the data. Raises :class:`SiteDataError` when no
    candidate is usable.
    """
    report.images_found += len(candidates)
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(candidates) > 16:
        with ThreadPoolExecutor(workers) as pool:
            checked = list(pool.map(lambda c: _check(c, mask_decoder), candidates))
    else:
        checked = [_check(c, mask_decoder) for c in candidates]

    fixed = list(class_names) if class_names is not None else None
    ok: list[_Checked] = []
    for res in checked:
        if res.problem is None and fixed is not None:
            unknown = sorted({n for n in res.label_names if n not in fixed})
            if unknown:
                res.problem = f"unknown class {unknown} (expected one of {fixed})"
        if res.problem is not None:
            report.add_problem(res.candidate.image_path, res.problem)
            log.warning("skipped %s", report.problems[-1])
        else:
            ok.append(res)
    names = fixed if fixed is not None else sorted({n for r in ok for n in r.label_names})
    if NORMAL_CLASS_NAME in names:
        raise SiteDataError(
            f"{root}: '{NORMAL_CLASS_NAME}' is reserved for images without lesions; "
            "it cannot be a box label"
        )
    to_id = {n: i + 1 for i, n in enumerate(names)}

    site_name = site if site is not None else Path(root).name
    records = []
    for res in ok:
        c = res.candidate
        records.append(
            SampleRecord(
                image_path=c.image_path,
                mask_path=c.mask_path,
                height=res.height,
                width=res.width,
                boxes=res.boxes.astype(np.float32).reshape(-1, 4),
                labels=np.asarray([to_id[n] for n in res.label_names], np.int64),
                meta=SampleMeta(
                    source=str(c.image_path),
                    mask_source=str(c.mask_path) if c.mask_path else None,
                    site=site_name,
                    patient_id=c.patient_id,
                    lesion_id=c.lesion_id,
                    morphologies=res.morphologies,
                    split=c.split,
                ),
                segmentation=c.segmentation,
            )
        )
    if not records:
        raise SiteDataError(no_usable_message(root, layout, report))
    log.info(
        "%s (%s): %d/%d images usable, %d problems",
        root, layout, len(records), report.images_found, len(report.problems),
    )
    return SiteIndex(root=Path(root), records=records, class_names=names, report=report)


def no_usable_message(root: Path, layout: str, report: DataReport, limit: int = 5) -> str:
    msg = f"{root}: no usable image in the {layout} layout ({report.images_found} found)"
    if report.problems:
        shown = "; ".join(str(p) for p in report.problems[:limit])
        more = len(report.problems) - limit
        msg += f"; problems: {shown}" + (f" (+{more} more)" if more > 0 else "")
    return msg


def resolve(base: Path, value: str) -> Path:
    """A path from an annotation file: absolute, or relative to ``base``."""
    p = Path(value)
    return p if p.is_absolute() else base / p


def index_by_stem(paths: Iterable[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(paths):
        out.setdefault(p.stem, p)
    return out
