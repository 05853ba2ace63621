"""Shared machinery for the layout scanners: decoding, validation, record building.

Every layout turns its annotation format into a list of :class:`Candidate` (paths plus
raw annotations in image pixels) and hands it to :func:`build_index`, which decodes
each image once, validates it (and its mask / boxes) and either produces a
:class:`~shared.data.sample.SampleRecord` or records a one-line problem.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import stat
import tomllib
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from ..sample import NORMAL_CLASS_NAME, DataReport, SampleMeta, SampleRecord, SiteIndex

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
DEFAULT_LESION_LABEL = "lesion"
#: Boxes may overshoot the image by this many pixels; they are clipped. Beyond: rejected.
BOX_TOLERANCE_PX = 2.0
#: Mask components smaller than this fraction of the image area are noise, not lesions.
MIN_COMPONENT_FRACTION = 0.0005
MANIFEST_NAME = "manifest.csv"
#: Optional site settings file in the site folder (``allowed-roots = [...]``).
SITE_SETTINGS_NAME = "endofed-site.toml"
SITE_SETTINGS_KEYS = ("allowed-roots",)
#: An image (or mask) whose header claims more pixels is skipped before decoding
#: (a decompression bomb: a few bytes that would decode to gigabytes).
MAX_IMAGE_PIXELS = 8192 * 8192
#: Files larger than this are not read at all.
MAX_FILE_BYTES = 512 * 2**20
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


class UnreadableFileError(ValueError):
    """A file that is not read: not a regular file, missing, unreadable or too large."""


class ImageReadError(UnreadableFileError):
    """An image or mask file that cannot be decoded."""


class TooLargeError(ImageReadError):
    """A file over :data:`MAX_FILE_BYTES`, or an image header over :data:`MAX_IMAGE_PIXELS`."""


# PIL warns (once per file) between its own limit and twice that; every such image is
# over MAX_IMAGE_PIXELS and skipped with a problem line, so the warning adds nothing.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


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
    oversized: bool = False  # skipped because a header is over MAX_IMAGE_PIXELS


# ----------------------------------------------------------------------------- reading

_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "a special file")


def not_regular_reason(path: Path) -> str | None:
    """Why ``path`` is not a regular file (symlinks followed), ``None`` when it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return f"{_kind(mode)}, not a regular file; not read"


def read_regular_file(path: Path, *, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    The file is opened non-blocking and checked with ``fstat`` before any read, so a
    FIFO, device or folder raises :class:`UnreadableFileError` instead of hanging.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnreadableFileError(f"cannot read file: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFileError(f"{_kind(st.st_mode)}, not a regular file; not read")
        if st.st_size > limit:
            raise TooLargeError(f"file of {st.st_size} bytes is over the {limit} byte limit")
        return fh.read(limit + 1)


def _check_bytes(path: Path, data: bytes) -> None:
    if len(data) == 0:
        raise ImageReadError("empty file")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        raise ImageReadError("truncated JPEG (no end-of-image marker)")


def header_size(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the image header (PIL reads no pixel data).

    Raises :class:`TooLargeError` above ``max_pixels`` (a decompression bomb is
    refused before it is decoded) and :class:`ImageReadError` for an unknown format.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Image.DecompressionBombError as exc:  # PIL's own, higher limit
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        amount = claimed.group(1) if claimed else f"more than {2 * Image.MAX_IMAGE_PIXELS}"
        raise TooLargeError(
            f"image header claims {amount} pixels, over the {max_pixels} pixel limit "
            "(a possible decompression bomb); not decoded"
        ) from exc
    except Exception as exc:  # PIL raises many types on a malformed header
        raise ImageReadError(
            "not a decodable image (corrupted or unsupported format)"
        ) from exc
    if width * height > max_pixels:
        raise TooLargeError(
            f"image header claims {width}x{height} pixels, over the {max_pixels} pixel "
            "limit (a possible decompression bomb); not decoded"
        )
    return width, height


def read_image_bytes(path: Path) -> bytes:
    """An image file's bytes (regular files only, size-capped); :class:`ImageReadError`
    for anything that cannot be an image."""
    try:
        return read_regular_file(path)
    except ImageReadError:
        raise
    except UnreadableFileError as exc:
        raise ImageReadError(str(exc)) from exc


def _decode(path: Path, flags: int, undecodable: str) -> np.ndarray:
    data = read_image_bytes(path)
    _check_bytes(path, data)
    header_size(data)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        detail = getattr(exc, "err", None) or str(exc).strip().splitlines()[-1]
        raise ImageReadError(f"{undecodable} ({detail})") from exc
    if img is None or img.size == 0:
        raise ImageReadError(f"{undecodable} (corrupted or unsupported format)")
    return img


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB ``uint8 (H, W, 3)``; raise :class:`ImageReadError`.

    Only regular files are read, at most :data:`MAX_FILE_BYTES`, and only when the
    header claims at most :data:`MAX_IMAGE_PIXELS` (else :class:`TooLargeError`).
    """
    from ..dicom import is_dicom_path, read_frame  # DICOM files and frames (*.dcm#<n>)

    if is_dicom_path(path):
        return read_frame(path)
    from ..video import is_video_frame_path, read_video_frame  # video frames (*.mp4#<i>)

    if is_video_frame_path(path):
        return read_video_frame(path)
    img = _decode(path, cv2.IMREAD_COLOR, "not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Lesion pixels of a decoded mask: values above half the mask's own maximum.

    So 0/1, 0/255 and 16-bit masks all work, and JPEG noise around 0 or 255 does not
    matter (for 0/255 this is the classic ``> 127``). Colour masks use the brightest
    colour channel (alpha is ignored). An all-zero mask has no lesion.
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., :3].max(axis=2) if m.shape[2] >= 3 else m[..., 0]
    if np.issubdtype(m.dtype, np.floating):
        m = np.nan_to_num(m, nan=0.0)
    hi = m.max() if m.size else 0
    if hi <= 0:
        return np.zeros(m.shape, dtype=bool)
    if np.issubdtype(m.dtype, np.integer):
        return m > hi // 2  # for integers the same as m > hi / 2
    return m > hi / 2


def read_mask(path: Path) -> np.ndarray:
    """Decode a mask file (as grey levels) to a boolean ``(H, W)`` array.

    See :func:`binarize_mask` for the rule; a colour mask is read as its grey level.
    """
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH  # 16-bit masks keep their values
    return binarize_mask(_decode(path, flags, "mask is not a decodable image"))


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


def missing_image_column(columns: Iterable[str]) -> str:
    """The problem line for a manifest without an ``image`` column."""
    found = ", ".join(repr(c) for c in columns) or "none"
    return (f"manifest has no 'image' column (columns found: {found}); add an 'image' "
            "column with each image's path relative to the site folder")


def manifest_header(path: Path) -> list[str]:
    """The manifest's column names (lower case; a UTF-8 BOM is ignored), ``[]`` if unreadable."""
    try:
        text = read_regular_file(path).decode("utf-8-sig")
    except (UnreadableFileError, UnicodeDecodeError):
        return []
    header = next(csv.reader(io.StringIO(text)), [])
    return [c.strip().lower() for c in header]


def read_manifest(path: Path, report: DataReport) -> pd.DataFrame | None:
    """Read a manifest CSV as strings; record a problem and return ``None`` if unreadable.

    A UTF-8 byte-order mark (as Excel writes) is ignored.
    """
    try:
        data = read_regular_file(path)
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False,
                         skipinitialspace=True, encoding="utf-8-sig")
    except Exception as exc:  # pandas raises several parser error types
        report.add_problem(path, f"unreadable CSV: {exc}".splitlines()[0])
        log.warning("%s", report.problems[-1])
        return None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "image" not in df.columns:
        report.add_problem(path, missing_image_column(df.columns))
        log.warning("%s", report.problems[-1])
        return None
    return df


def load_json(path: Path, report: DataReport | None = None) -> Any | None:
    """Parse a JSON file; on failure record a problem (if a report is given)."""
    try:
        return json.loads(read_regular_file(path).decode("utf-8-sig"))
    except UnreadableFileError as exc:
        if report is not None:
            report.add_problem(path, str(exc))
            log.warning("%s", report.problems[-1])
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        if report is not None:
            report.add_problem(path, f"malformed JSON: {exc}")
            log.warning("%s", report.problems[-1])
        return None


def list_images(folder: Path, report: DataReport | None = None) -> list[Path]:
    """Regular image files directly inside ``folder`` (sorted, any case of extension).

    Entries with an image extension that are not regular files (a FIFO, a device, a
    folder, a broken link) are left out, and reported as problems when ``report`` is
    given.
    """
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        reason = not_regular_reason(p)
        if reason is None:
            out.append(p)
        elif report is not None:
            report.add_problem(p, reason)
            log.warning("skipped %s", report.problems[-1])
    return out


# ----------------------------------------------------------------------------- site paths


class OutsideSiteError(ValueError):
    """An annotation names a file outside the site folder and its allowed roots."""


@dataclass(frozen=True)
class SitePaths:
    """Where a site's files may be: its folder, plus the ``allowed-roots`` it names.

    Every path an annotation gives (a manifest's ``image`` / ``mask``, a COCO
    ``file_name``) and every listed file (symlinks followed) must lie under one of
    these folders; other paths are reported and never opened. A site whose images live
    elsewhere lists those folders in ``endofed-site.toml`` in the site folder::

        allowed-roots = ["/mnt/pacs-export/endoscopy"]

    (absolute, or relative to the site folder; each must be an existing folder).
    """

    root: Path
    allowed: tuple[Path, ...]

    @classmethod
    def for_site(cls, root: Path) -> SitePaths:
        """The site folder's rules; raise :class:`SiteDataError` for a bad settings file."""
        root = Path(root)
        allowed = [Path(os.path.realpath(root))]
        settings = root / SITE_SETTINGS_NAME
        if settings.exists():
            allowed += _allowed_roots(settings, root)
        return cls(root, tuple(allowed))

    def outside(self, path: Path) -> bool:
        """Whether ``path`` (symlinks followed) lies outside every allowed folder."""
        real = Path(os.path.realpath(path))
        return not any(real == a or real.is_relative_to(a) for a in self.allowed)

    def reason(self, what: str, value: str | Path) -> str:
        """The problem line for a ``what`` (image, mask) pointing at ``value`` outside."""
        return (f"{what} {str(value)!r} is outside the site folder; not read (to allow "
                f"another folder, list it under 'allowed-roots' in {SITE_SETTINGS_NAME} "
                "in the site folder)")

    def locate(self, base: Path, value: str, what: str) -> Path:
        """:func:`resolve` ``value``; raise :class:`OutsideSiteError` when outside."""
        path = resolve(base, value)
        if self.outside(path):
            raise OutsideSiteError(self.reason(what, value))
        return path


def _allowed_roots(settings: Path, root: Path) -> list[Path]:
    try:
        data = tomllib.loads(read_regular_file(settings).decode("utf-8-sig"))
    except (UnreadableFileError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SiteDataError(f"{settings}: cannot read the site settings: {exc}; fix or "
                            "remove the file") from exc
    unknown = sorted(set(data) - set(SITE_SETTINGS_KEYS))
    if unknown:
        raise SiteDataError(f"{settings}: unknown key(s) {unknown}; the known key is "
                            "'allowed-roots'")
    roots = data.get("allowed-roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise SiteDataError(f"{settings}: 'allowed-roots' must be a list of folder paths, "
                            'e.g. allowed-roots = ["/mnt/images"]')
    out = []
    for r in roots:
        path = resolve(root, r)
        if not path.is_dir():
            raise SiteDataError(f"{settings}: allowed-roots entry {r!r} is not an existing "
                                "folder")
        out.append(Path(os.path.realpath(path)))
    return out


# ----------------------------------------------------------------------------- building


def _check(
    cand: Candidate,
    mask_decoder: Callable[[Candidate, int, int], np.ndarray] | None,
    paths: SitePaths,
) -> _Checked:
    res = _Checked(cand)
    for what, path in (("image", cand.image_path), ("mask", cand.mask_path)):
        if path is not None and paths.outside(path):
            res.problem = paths.reason(what, path)
            return res
    try:
        img = read_image(cand.image_path)
    except ImageReadError as exc:
        res.problem = str(exc)
        res.oversized = isinstance(exc, TooLargeError)
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
            res.oversized = isinstance(exc, TooLargeError)
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
    paths: SitePaths | None = None,
) -> SiteIndex:
    """Validate candidates (decoding each image once) and build the :class:`SiteIndex`.

    ``class_names`` fixes the class order (labels ``1..K``) so several sites agree;
    boxes of other classes are then reported as problems. Without it the classes
    are the sorted names found in the data. Image and mask paths outside ``paths``
    (default: the site folder's :class:`SitePaths`) are reported and never opened;
    images over :data:`MAX_IMAGE_PIXELS` are reported and counted in
    ``report.oversized``. Raises :class:`SiteDataError` when no candidate is usable.
    """
    paths = paths if paths is not None else SitePaths.for_site(root)
    report.images_found += len(candidates)
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(candidates) > 16:
        with ThreadPoolExecutor(workers) as pool:
            checked = list(pool.map(lambda c: _check(c, mask_decoder, paths), candidates))
    else:
        checked = [_check(c, mask_decoder, paths) for c in candidates]

    fixed = list(class_names) if class_names is not None else None
    ok: list[_Checked] = []
    for res in checked:
        if res.problem is None and fixed is not None:
            unknown = sorted({n for n in res.label_names if n not in fixed})
            if unknown:
                res.problem = f"unknown class {unknown} (expected one of {fixed})"
        if res.problem is not None:
            report.add_problem(res.candidate.image_path, res.problem)
            report.oversized += res.oversized
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


def group_by_stem(paths: Iterable[Path]) -> dict[str, list[Path]]:
    """Paths grouped by file stem (sorted); a group of two or more is ambiguous."""
    out: dict[str, list[Path]] = {}
    for p in sorted(paths):
        out.setdefault(p.stem, []).append(p)
    return out
