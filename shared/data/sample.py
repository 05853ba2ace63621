"""The one sample record every layout loader produces, and the site index around it.

Conventions (used by the model, the metrics and the federation):

* ``image``: RGB ``uint8`` array of shape ``(H, W, 3)``.
* ``mask``: boolean lesion mask of shape ``(H, W)`` (union of all lesions).
* ``boxes``: ``float32`` array ``(N, 4)`` in absolute pixel XYXY.
* ``labels``: ``int64`` array ``(N,)`` with values ``1..len(class_names)``;
  ``0`` is reserved for background / "normal" (no lesion).
* ``morphologies``: one string per box (``""`` when unknown).

The image-level class of a sample is the label of its largest box, ``0`` when it has
no box (see :func:`image_label`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NORMAL_CLASS_NAME = "normal"


@dataclass
class SampleMeta:
    """Where a sample came from; never leaves the site."""

    source: str
    mask_source: str | None = None
    site: str = ""
    patient_id: str | None = None
    lesion_id: str | None = None
    morphologies: list[str] = field(default_factory=list)
    split: str | None = None


@dataclass
class Sample:
    """A decoded sample: image, mask, boxes and labels (see module docstring)."""

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    meta: SampleMeta

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class SampleRecord:
    """A validated, not yet decoded sample: paths plus annotations.

    ``mask_path`` may be ``None`` (then the mask is empty, or ``polygons``/``rle``
    carry it for COCO data). ``boxes``/``labels`` are final (already derived from
    the mask or read from JSON at scan time).
    """

    image_path: Path
    mask_path: Path | None
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    meta: SampleMeta
    segmentation: list | dict | None = None  # COCO polygons / RLE, decoded at load time

    @property
    def group_id(self) -> str:
        """Split unit: patient id, else lesion id, else the image itself."""
        return self.meta.patient_id or self.meta.lesion_id or str(self.image_path)


@dataclass
class DataProblem:
    """One skipped file (or row) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class DataReport:
    """Counts of what a scan found; problems are skipped, never silently dropped."""

    root: str
    layout: str
    images_found: int = 0
    problems: list[DataProblem] = field(default_factory=list)
    #: images (or masks) skipped because their header claims more pixels than the cap
    oversized: int = 0

    def add_problem(self, path: str | Path, reason: str) -> None:
        self.problems.append(DataProblem(str(path), reason))


@dataclass
class SiteIndex:
    """All usable records of a site folder, its class names and the scan report."""

    root: Path
    records: list[SampleRecord]
    class_names: list[str]
    report: DataReport

    @property
    def morphology_names(self) -> list[str]:
        names = sorted({m for r in self.records for m in r.meta.morphologies if m})
        return names


def image_label(boxes: np.ndarray, labels: np.ndarray) -> int:
    """Image-level class: label of the largest box, 0 ("normal") without boxes."""
    if len(labels) == 0:
        return 0
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(labels[int(np.argmax(areas))])
