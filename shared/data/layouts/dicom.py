"""DICOM sites: ``*.dcm`` files (VL Endoscopic / VL Photographic) plus a mask folder.

Folder::

    root/
      **/*.dcm (or *.dicom)        single- or multi-frame files, any subfolders but masks/
      masks/<stem>.png             mask of a single-frame file <stem>.dcm
      masks/<stem>_<n>.png         mask of frame n (from 1) of <stem>.dcm

Each frame is one image (record path ``<file>.dcm#<n>`` for multi-frame files, see
:mod:`shared.data.dicom`). A ``masks/`` folder is required: it says the frames were
annotated, so a frame without a mask has no lesion (as in the Kvasir layout); an
empty ``masks/`` folder says every frame is lesion-free. Without it the scan stops.
The header's PatientID becomes the record's group (split unit) as a salted hash; the
raw id is never stored, logged or written. Files without PatientID form their own group.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from .. import dicom  # the reader (imported as a module: it imports _base too)
from ..sample import DataReport, SiteIndex
from ._base import (
    Candidate,
    ImageReadError,
    SiteDataError,
    SitePaths,
    TooLargeError,
    build_index,
    list_images,
    not_regular_reason,
)

log = logging.getLogger(__name__)

_FRAME_MASK = re.compile(r"^(?P<stem>.+)_(?P<frame>\d+)$")


def walk_dicom(root: Path) -> Iterator[Path]:
    """DICOM-named entries under ``root`` (sorted, not in ``masks/``, no folder links)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not (here == root and d == "masks"))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in dicom.DICOM_EXTENSIONS:
                yield here / name


def has_dicom(root: Path) -> bool:
    """Whether ``root`` holds at least one DICOM-named file (for layout detection)."""
    return next(walk_dicom(Path(root)), None) is not None


def scan_dicom(
    root: Path, *, site: str | None = None, class_names: list[str] | None = None
) -> SiteIndex:
    """Scan a DICOM site folder (see module docstring)."""
    root = Path(root)
    masks_dir = root / "masks"
    if not masks_dir.is_dir():
        raise SiteDataError(
            f"{root}: the DICOM layout needs a masks/ folder (masks/<stem>.png, or "
            "masks/<stem>_<frame>.png for multi-frame files); an empty masks/ folder says "
            "every frame is lesion-free")
    paths = SitePaths.for_site(root)
    report = DataReport(root=str(root), layout="dicom")
    masks: dict[str, Path] = {}
    for m in list_images(masks_dir, report):
        masks.setdefault(m.stem, m)
        if fm := _FRAME_MASK.match(m.stem):  # also stem_001 for frame 1
            masks.setdefault(f"{fm['stem']}_{int(fm['frame'])}", m)

    def skip(path: Path, reason: str, oversized: bool = False) -> None:
        report.images_found += 1
        report.oversized += oversized
        report.add_problem(path, reason)
        log.warning("skipped %s", report.problems[-1])

    candidates: list[Candidate] = []
    for file in walk_dicom(root):
        reason = not_regular_reason(file)
        if reason is None and paths.outside(file):
            reason = paths.reason("image", file)
        if reason is not None:
            skip(file, reason)
            continue
        try:
            head = dicom.read_header(file)
        except ImageReadError as exc:
            skip(file, str(exc), isinstance(exc, TooLargeError))
            continue
        group = head.patient_group or dicom.patient_group(f"file:{os.path.realpath(file)}")
        stem = file.stem
        for n in range(1, head.frames + 1):
            keys = [f"{stem}_{n}"] + ([stem] if head.frames == 1 else [])
            mask = next((masks[k] for k in keys if k in masks), None)
            candidates.append(Candidate(image_path=dicom.frame_path(file, n, head.frames),
                                        mask_path=mask, patient_id=group))
    return build_index(root, "dicom", candidates, report, site=site,
                       class_names=class_names, paths=paths)
