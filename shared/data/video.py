"""Procedure videos (mp4 / avi) read with OpenCV, sampled at a chosen rate.

A video is read front to back (``grab`` for the frames that are skipped, ``retrieve``
for the sampled ones), so sampling does not depend on the container's seek accuracy.
Sampled frame ``k`` is the frame nearest to ``k / fps`` seconds: with a 25 frame/s
video and ``fps=1`` that is frames 0, 25, 50, ... As site data, the frames of one
video are one patient group (one procedure of one patient).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .layouts._base import MAX_IMAGE_PIXELS, ImageReadError, TooLargeError, not_regular_reason

log = logging.getLogger(__name__)

#: File name endings read as videos.
VIDEO_EXTENSIONS = (".mp4", ".avi")
#: Default sampling rate of ``endofed predict`` on a video (frames per second).
DEFAULT_VIDEO_FPS = 1.0


class VideoReadError(ImageReadError):
    """A video file that cannot be opened or decoded; the message names the file."""


def is_video_path(path: Path | str) -> bool:
    """Whether ``path`` is named like a video file (:data:`VIDEO_EXTENSIONS`)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video."""

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps if self.fps > 0 else 0.0


@dataclass(frozen=True)
class VideoFrame:
    """One sampled frame: its index in the video, its time and its RGB pixels."""

    index: int
    time_s: float
    image: np.ndarray  # uint8 (H, W, 3) RGB


def _open(path: Path) -> cv2.VideoCapture:
    reason = not_regular_reason(path)
    if reason is not None:
        raise VideoReadError(f"{path}: {reason}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"{path}: not a video OpenCV can open (mp4 / avi expected)")
    return cap


def probe_video(path: Path | str) -> VideoInfo:
    """Frame rate, frame count and size of a video (nothing is decoded).

    Raises:
        VideoReadError: not a readable video, or no frame rate / size in its header.
        TooLargeError: frames over :data:`~shared.data.layouts.MAX_IMAGE_PIXELS`.
    """
    path = Path(path)
    cap = _open(path)
    try:
        info = VideoInfo(
            path=path,
            fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            frame_count=int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        )
    finally:
        cap.release()
    if not (math.isfinite(info.fps) and info.fps > 0) or info.width <= 0 or info.height <= 0:
        raise VideoReadError(f"{path}: the video header has no frame rate or frame size")
    if info.width * info.height > MAX_IMAGE_PIXELS:
        raise TooLargeError(
            f"{path}: frames of {info.width}x{info.height} exceed the pixel cap "
            f"({MAX_IMAGE_PIXELS} pixels)"
        )
    return info


def sampled_indices(native_fps: float, frame_count: int, fps: float) -> list[int]:
    """Indices of the frames nearest to ``0, 1/fps, 2/fps, ...`` seconds (no repeats).

    ``fps`` at or above ``native_fps`` keeps every frame.
    """
    out: list[int] = []
    for i in _index_stream(native_fps, fps):
        if i >= frame_count:
            return out
        out.append(i)
    return out  # pragma: no cover - the stream is endless


def _index_stream(native_fps: float, fps: float) -> Iterator[int]:
    """Endless increasing frame indices nearest to ``k / fps`` seconds (no repeats)."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"sampling rate must be a positive number of frames/s, got {fps}")
    step = native_fps / fps
    last, k = -1, 0
    while True:
        i = int(math.floor(k * step + 0.5))
        if i != last:
            yield i
            last = i
        k += 1


def read_video_frames(path: Path | str, *, fps: float = DEFAULT_VIDEO_FPS) -> Iterator[VideoFrame]:
    """The video's frames sampled at ``fps`` frames per second, as RGB ``uint8``.

    A container whose frame count is missing or wrong is read to its end: the frames
    actually decoded decide. Raises :class:`VideoReadError` for a file that opens but
    yields no frame at all.
    """
    path = Path(path)
    info = probe_video(path)
    # the header's count can be short or missing: the frames decoded decide
    wanted = _index_stream(info.fps, fps)
    cap = _open(path)
    try:
        target = next(wanted)
        index = 0
        decoded = 0
        while cap.grab():
            decoded += 1
            if index == target:
                ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    raise VideoReadError(f"{path}: frame {index} cannot be decoded")
                yield VideoFrame(index, index / info.fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                target = next(wanted)
            index += 1
        if decoded == 0:
            raise VideoReadError(f"{path}: the video has no decodable frame")
        if info.frame_count and decoded != info.frame_count:
            log.info("%s: header says %d frames, %d decoded", path, info.frame_count, decoded)
    finally:
        cap.release()


# -- video frames as site images ---------------------------------------------------
#: A site video's frame as a record path: ``<file>.mp4#<index>`` (index from 0).
_FRAME_RE = re.compile(r"^(?P<file>.*\.(?:mp4|avi))#(?P<index>\d+)$", re.IGNORECASE)


def video_frame_path(path: Path, index: int) -> Path:
    """The record path of frame ``index`` (0-based) of a video."""
    return Path(f"{path}#{int(index)}")


def is_video_frame_path(path: Path | str) -> bool:
    """Whether ``path`` is a frame path ``<file>.mp4#<index>`` (or ``.avi``)."""
    return _FRAME_RE.match(str(path)) is not None


def read_video_frame(path: Path | str) -> np.ndarray:
    """Decode the frame a ``<file>.mp4#<index>`` path names, RGB ``uint8``.

    Reads front to back from the start (no container seek), so the pixels are those
    :func:`read_video_frames` yields for that index.
    """
    m = _FRAME_RE.match(str(path))
    if m is None:
        raise VideoReadError(f"{path}: not a video frame path (<file>.mp4#<index>)")
    file, index = Path(m["file"]), int(m["index"])
    probe_video(file)  # regular file, header, pixel cap
    cap = _open(file)
    try:
        for _ in range(index):
            if not cap.grab():
                raise VideoReadError(f"{file}: has no frame {index}")
        ok, bgr = cap.read()
    finally:
        cap.release()
    if not ok or bgr is None:
        raise VideoReadError(f"{file}: frame {index} cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def video_group(path: Path | str) -> str:
    """The split group of a video's frames: one procedure, one group (a salted-free
    short hash of the file's real path; the path itself stays at the site)."""
    import hashlib
    import os

    digest = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    return f"video:{digest}"
