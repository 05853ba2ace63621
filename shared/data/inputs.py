"""Images and videos given on a command line (``endofed predict``): listed, checked,
named uniquely.

The files are read later with the site scan's own :func:`~shared.data.layouts.read_image`
(regular files only, pixel cap before decoding); this module decides *which* files and
the output name of each, so that two inputs never write the same output file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .dicom import DICOM_EXTENSIONS, dicom_frames
from .layouts._base import IMAGE_EXTENSIONS, not_regular_reason
from .video import VIDEO_EXTENSIONS, is_video_path

#: Output stems that are taken already (``summary.json`` of ``endofed predict``).
RESERVED_NAMES = ("summary",)


@dataclass(frozen=True)
class InputImage:
    """An image (or video) to read and the output stem (a relative POSIX path) for its
    results."""

    path: Path
    name: str

    @property
    def is_video(self) -> bool:
        """A video file (:data:`~shared.data.video.VIDEO_EXTENSIONS`): sampled, not read whole."""
        return is_video_path(self.path)


def _walk(folder: Path, exclude: Path | None) -> Iterable[Path]:
    """Image-named entries under ``folder`` in sorted order, not following folder links."""
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames
            if exclude is None or Path(os.path.realpath(here / d)) != exclude
        )
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS + DICOM_EXTENSIONS + VIDEO_EXTENSIONS:
                yield here / name


def _unique(stem: str, taken: set[str]) -> str:
    """``stem``, else ``stem-2``, ``stem-3``, ... (compared case-insensitively)."""
    name, n = stem, 1
    while name.casefold() in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name.casefold())
    return name


def collect_images(
    inputs: Sequence[Path], *, exclude: Path | None = None
) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Expand files and folders (recursively) into images with unique output names.

    A folder's images are named by their path inside it without the extension
    (``a/s.png`` -> ``a/s``), a file given directly by its stem; a name already taken
    (``a/s.png`` and ``a/s.jpg``, two folders, ``summary``) gets ``-2``, ``-3``, ...
    The same file given twice is listed once. Entries that are not regular files (a
    FIFO, a device, a broken link) come back as ``(path, reason)`` problems and are
    never opened; ``exclude`` (the output folder) is not descended into.

    Raises:
        FileNotFoundError: an input that does not exist.
    """
    exclude = Path(os.path.realpath(exclude)) if exclude is not None else None
    taken = {n.casefold() for n in RESERVED_NAMES}
    seen: set[str] = set()
    images: list[InputImage] = []
    problems: list[tuple[str, str]] = []
    for given in inputs:
        given = Path(given)
        if not given.exists() and not given.is_symlink():
            raise FileNotFoundError(f"{given}: no such image or folder")
        if given.is_dir():
            found = [(p, p.relative_to(given).with_suffix("").as_posix())
                     for p in _walk(given, exclude)]
        else:
            found = [(given, given.stem)]
        for path, stem in found:
            reason = not_regular_reason(path)
            if reason is not None:
                problems.append((str(path), reason))
                continue
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            if Path(path).suffix.lower() in DICOM_EXTENSIONS:  # one input per frame
                frames, reason = dicom_frames(path, stem)
                problems += [(str(path), reason)] if reason else []
                images += [InputImage(f, _unique(s, taken)) for f, s in frames]
                continue
            images.append(InputImage(path, _unique(stem, taken)))
    return images, problems
