"""Video sites: procedure videos (``*.mp4`` / ``*.avi``) plus a mask folder.

Folder::

    root/
      **/*.mp4, **/*.avi           procedure videos, any subfolders but masks/
      masks/<stem>_<index>.png     mask of frame <index> (0-based) of <stem>.mp4

Each video is sampled at :data:`SITE_VIDEO_FPS` frames per second (frames nearest to
0, 1, 2 ... s; :func:`~shared.data.video.sampled_indices`); each sampled frame is one
image with record path ``<file>.mp4#<index>``. A ``masks/`` folder is required (as for
DICOM): it says the frames were annotated, so a sampled frame without a mask has no
lesion. All frames of one video form one patient group, so a video never straddles
the train/validation split.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from .. import video
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

#: Frames per second a site's videos are sampled at.
SITE_VIDEO_FPS = 1.0
_FRAME_MASK = re.compile(r"^(?P<stem>.+)_(?P<index>\d+)$")


def walk_videos(root: Path) -> Iterator[Path]:
    """Video-named entries under ``root`` (sorted, not in ``masks/``, no folder links)."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not (here == root and d == "masks"))
        for name in sorted(filenames):
            if video.is_video_path(name):
                yield here / name


def has_videos(root: Path) -> bool:
    """Whether ``root`` holds at least one video-named file (for layout detection)."""
    return next(walk_videos(Path(root)), None) is not None


def scan_video(
    root: Path, *, site: str | None = None, class_names: list[str] | None = None
) -> SiteIndex:
    """Scan a video site folder (see module docstring)."""
    root = Path(root)
    masks_dir = root / "masks"
    if not masks_dir.is_dir():
        raise SiteDataError(
            f"{root}: the video layout needs a masks/ folder (masks/<stem>_<frame index>.png "
            "for the annotated frames); an empty masks/ folder says every frame is "
            "lesion-free")
    paths = SitePaths.for_site(root)
    report = DataReport(root=str(root), layout="video")
    masks: dict[tuple[str, int], Path] = {}
    for m in list_images(masks_dir, report):
        if fm := _FRAME_MASK.match(m.stem):
            masks.setdefault((fm["stem"], int(fm["index"])), m)
    candidates: list[Candidate] = []
    for file in walk_videos(root):
        reason = not_regular_reason(file)
        if reason is None and paths.outside(file):
            reason = paths.reason("image", file)
        info = None
        if reason is None:
            try:
                info = video.probe_video(file)
            except ImageReadError as exc:
                reason = str(exc)
                report.oversized += isinstance(exc, TooLargeError)
        if info is None or info.frame_count <= 0:
            report.images_found += 1
            report.add_problem(file, reason or "the video header has no frame count")
            log.warning("skipped %s", report.problems[-1])
            continue
        group = video.video_group(file)
        for index in video.sampled_indices(info.fps, info.frame_count, SITE_VIDEO_FPS):
            candidates.append(Candidate(image_path=video.video_frame_path(file, index),
                                        mask_path=masks.get((file.stem, index)),
                                        patient_id=group))
    return build_index(root, "video", candidates, report, site=site,
                       class_names=class_names, paths=paths)
