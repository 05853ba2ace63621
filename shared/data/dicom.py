"""DICOM stills and multi-frame files (VL Endoscopic / VL Photographic) read as RGB frames.

Supported: SOP classes in :data:`SOP_CLASSES`; transfer syntaxes in
:data:`TRANSFER_SYNTAXES` (uncompressed little endian, deflated, JPEG Baseline decoded
by Pillow: no extra native package); 8-bit RGB, YBR_FULL, YBR_FULL_422 (converted with
pydicom's ``convert_color_space``) and MONOCHROME2 (repeated to 3 channels). Anything
else is refused with one line saying what is supported.

A frame of a multi-frame file is addressed by a *frame path* ``<file>#<n>`` (``n``
from 1, as DICOM numbers frames); a single-frame file is its own path. The header is
read first and the site's pixel cap (:data:`~shared.data.layouts._base.MAX_IMAGE_PIXELS`)
applied per frame before any pixel is decoded; a JPEG frame's own header is checked
too. The raw PatientID never leaves this module: :func:`patient_group` turns it into a
salted hash (salt: ``ENDOFED_PATIENT_ID_SALT``, else ``~/.endofed/patient-id-salt``,
created once).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .layouts._base import (
    MAX_IMAGE_PIXELS,
    ImageReadError,
    TooLargeError,
    header_size,
    read_image_bytes,
)

DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
}
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    JPEG_BASELINE: "JPEG Baseline",
}
PHOTOMETRIC = ("RGB", "YBR_FULL", "YBR_FULL_422", "MONOCHROME2")
SALT_ENV = "ENDOFED_PATIENT_ID_SALT"
_FRAME_RE = re.compile(r"^(?P<file>.*\.(?:dcm|dicom))(?:#(?P<frame>\d+))?$", re.IGNORECASE)


class UnsupportedDicomError(ImageReadError):
    """A DICOM file of another SOP class, transfer syntax or pixel format."""


def _supported(table: dict[str, str]) -> str:
    return ", ".join(f"{name} ({uid})" for uid, name in table.items())


def is_dicom_path(path: Path | str) -> bool:
    """Whether ``path`` names a DICOM file or a frame path ``<file>.dcm#<n>``."""
    return _FRAME_RE.match(str(path)) is not None


def split_frame_path(path: Path | str) -> tuple[Path, int]:
    """``(file, frame)`` of a frame path; a plain file is frame 1."""
    m = _FRAME_RE.match(str(path))
    if m is None:
        raise ValueError(f"{path}: not a DICOM path (expected *.dcm or *.dcm#<frame>)")
    return Path(m["file"]), int(m["frame"] or 1)


def frame_path(path: Path, frame: int, frames: int) -> Path:
    """The path of ``frame`` (1-based): the file itself when it has one frame."""
    return Path(path) if frames == 1 else Path(f"{path}#{frame}")


@dataclass(frozen=True)
class DicomHeader:
    """What the header says, checked: size, frames and the hashed patient group."""

    path: Path
    rows: int
    columns: int
    frames: int
    photometric: str
    transfer_syntax: str
    patient_group: str | None


def _read(path: Path, stop_before_pixels: bool):  # -> pydicom Dataset
    import pydicom
    from pydicom.errors import InvalidDicomError

    data = read_image_bytes(path)
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ImageReadError(f"not a readable DICOM file ({exc})".splitlines()[0]) from exc


def _check_header(path: Path, ds, group: bool) -> DicomHeader:  # noqa: ANN001 (Dataset)
    sop = str(ds.get("SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    if sop not in SOP_CLASSES:
        raise UnsupportedDicomError(
            f"DICOM SOP class {sop or 'missing'} is not supported; supported: "
            f"{_supported(SOP_CLASSES)}")
    ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
    if ts not in TRANSFER_SYNTAXES:
        raise UnsupportedDicomError(
            f"DICOM transfer syntax {ts or 'missing'} is not supported; supported: "
            f"{_supported(TRANSFER_SYNTAXES)} (convert with e.g. dcmdjpeg)")
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if pi not in PHOTOMETRIC or bits != 8:
        raise UnsupportedDicomError(
            f"DICOM pixels {pi or 'without PhotometricInterpretation'} with "
            f"{bits} bits allocated are not supported; supported: 8-bit "
            f"{', '.join(PHOTOMETRIC)}")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows <= 0 or cols <= 0 or frames <= 0:
        raise ImageReadError(f"DICOM header gives no image size ({cols}x{rows}, "
                             f"{frames} frames)")
    if rows * cols > MAX_IMAGE_PIXELS:
        raise TooLargeError(
            f"DICOM header claims {cols}x{rows} pixels per frame, over the "
            f"{MAX_IMAGE_PIXELS} pixel limit (a possible decompression bomb); not decoded")
    pid = str(ds.get("PatientID", "") or "").strip()
    return DicomHeader(Path(path), rows, cols, frames, pi, ts,
                       patient_group(pid) if pid and group else None)


def read_header(path: Path, *, group: bool = True) -> DicomHeader:
    """Read and check a DICOM header only (no pixel data).

    ``group``: compute :attr:`DicomHeader.patient_group` (needs the salt); else ``None``.

    Raises :class:`UnsupportedDicomError` (other SOP class / syntax / pixel format),
    :class:`~shared.data.layouts._base.TooLargeError` (over the pixel cap) or
    :class:`~shared.data.layouts._base.ImageReadError` (not DICOM, unreadable).
    """
    return _check_header(path, _read(path, stop_before_pixels=True), group)


@functools.lru_cache(maxsize=2)
def _cached_dataset(file: str, mtime_ns: int, size: int):  # -> pydicom Dataset
    """The parsed file, kept while its frames are read one by one (keyed by mtime/size)."""
    return _read(Path(file), stop_before_pixels=False)


def read_frame(path: Path | str) -> np.ndarray:
    """Decode a DICOM file or frame path to RGB ``uint8 (H, W, 3)`` (see module doc)."""
    file, frame = split_frame_path(path)
    try:
        st = os.stat(file)
    except OSError as exc:
        raise ImageReadError(f"cannot read file: {exc.strerror or exc}") from exc
    ds = _cached_dataset(str(file), st.st_mtime_ns, st.st_size)
    return dataset_frame(ds, file, frame)


def dataset_frame(ds: Any, file: Path, frame: int = 1) -> np.ndarray:
    """Frame ``frame`` (1-based) of a parsed dataset ``ds`` as RGB ``uint8 (H, W, 3)``.

    The header is checked as the site scan checks it (``file`` names it in errors);
    JPEG baseline frames pass the pixel cap before decoding.
    """
    from pydicom.encaps import get_frame
    from pydicom.pixels import convert_color_space, pixel_array

    head = _check_header(file, ds, group=False)
    if frame > head.frames:
        raise ImageReadError(f"frame {frame} asked for, the file has {head.frames}")
    if "PixelData" not in ds:
        raise ImageReadError("DICOM file without pixel data")
    try:
        if head.transfer_syntax == JPEG_BASELINE:
            header_size(get_frame(ds.PixelData, frame - 1, number_of_frames=head.frames))
            arr = pixel_array(ds, index=frame - 1, raw=True, decoding_plugin="pillow")
        else:
            arr = pixel_array(ds, index=frame - 1, raw=True)
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom raises several types on damaged pixel data
        raise ImageReadError(f"DICOM pixel data not decodable ({exc})".splitlines()[0]) from exc
    if head.photometric == "MONOCHROME2":
        arr = np.repeat(arr.reshape(head.rows, head.columns, 1), 3, axis=2)
    elif head.photometric.startswith("YBR_FULL"):
        arr = convert_color_space(arr, head.photometric, "RGB")
    return np.ascontiguousarray(arr.reshape(head.rows, head.columns, 3), dtype=np.uint8)


def _salt() -> bytes:
    env = os.environ.get(SALT_ENV)
    if env:
        return env.encode()
    path = Path.home() / ".endofed" / "patient-id-salt"
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return path.read_bytes().strip()
    except FileExistsError:
        return path.read_bytes().strip()
    except OSError as exc:
        raise ImageReadError(
            f"cannot create the patient-id salt {path}: {exc.strerror or exc}; set "
            f"{SALT_ENV} to a long random secret kept at the site") from exc


def patient_group(patient_id: str) -> str:
    """The salted hash standing for a PatientID (the raw id is never stored)."""
    digest = hmac.new(_salt(), patient_id.encode(), hashlib.sha256).hexdigest()
    return f"patient-{digest[:16]}"


def dicom_frames(path: Path, stem: str) -> tuple[list[tuple[Path, str]], str | None]:
    """``([(frame path, output stem)], None)`` for a DICOM input, ``([], reason)`` if refused.

    A multi-frame file's frames are named ``<stem>_frame<n>`` (``n`` from 1, zero-padded
    to the frame count's width); a single-frame file keeps ``<stem>``.
    """
    try:
        head = read_header(Path(path), group=False)
    except ImageReadError as exc:
        return [], str(exc)
    if head.frames == 1:
        return [(Path(path), stem)], None
    width = len(str(head.frames))
    return [(frame_path(Path(path), n, head.frames), f"{stem}_frame{n:0{width}d}")
            for n in range(1, head.frames + 1)], None


def source_file(path: Path | str) -> tuple[Path, int | None]:
    """The file behind a record path and its frame (``None`` unless ``<file>#<n>``)."""
    m = _FRAME_RE.match(str(path))
    if m is None or m["frame"] is None:
        return Path(path), None
    return Path(m["file"]), int(m["frame"])
