"""Per-site, content-addressed cache of preprocessed samples.

A cache entry is keyed by a BLAKE2b hash of the image bytes, the mask bytes, the
record's boxes/labels/segmentation, the pipeline fingerprint
(:meth:`PreprocessConfig.fingerprint`, which includes the pipeline version) and the
overlay detector's fingerprint (its kind and, for a learned one, its weights). A
changed file, pipeline or detector therefore gives a new key: stale results are never
reused. Entries are a PNG (the preprocessed image) plus an ``.npz`` (packed mask,
boxes, labels, the preprocessing report), written atomically; a damaged entry is
recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from endofed.shared.data.dicom import source_file
from endofed.shared.data.sample import Sample, SampleRecord
from endofed.shared.data.site import load_sample
from endofed.shared.preprocessing.classical_detector import default_detector
from endofed.shared.preprocessing.config import PreprocessConfig
from endofed.shared.preprocessing.overlay import OverlayDetector
from endofed.shared.preprocessing.pipeline import PreprocessInfo, preprocess_sample
from endofed.shared.util.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

Loader = Callable[[SampleRecord], Sample]


def resolve_detector(
    config: PreprocessConfig, detector: OverlayDetector | None
) -> OverlayDetector | None:
    """The detector a pipeline run uses: ``detector``, else the default one (``None``
    when ``config`` detects no overlays)."""
    if not config.detect_overlays:
        return None
    if detector is None:
        return default_detector(config)
    if not isinstance(detector, OverlayDetector):
        raise TypeError(f"detector {detector!r} is not an OverlayDetector (a callable "
                        "image -> OverlayDetection with a fingerprint)")
    return detector


def encode_png(array: np.ndarray, path: Path) -> bytes:
    """PNG bytes of an RGB or one-channel uint8 array (``path`` names it in errors)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    return buf.tobytes()


class SiteCache:
    """Preprocessed samples of one site, stored under ``root_dir``.

    ``get(record)`` returns the preprocessed sample, computing and storing it only on
    a miss; ``computed`` and ``hits`` count both cases.

    Args:
        root_dir: where entries are stored.
        config: the pipeline (default: :class:`PreprocessConfig` defaults).
        loader: ``record -> Sample`` of the raw sample (default: ``load_sample``).
        detector: the overlay detector (default: the classical one; a config that
            names another detector needs it passed in).
    """

    def __init__(
        self,
        root_dir: Path | str,
        config: PreprocessConfig | None = None,
        *,
        loader: Loader | None = None,
        detector: OverlayDetector | None = None,
    ) -> None:
        self.root = Path(root_dir)
        self.config = config or PreprocessConfig()
        self.loader = loader or load_sample
        self.detector = resolve_detector(self.config, detector)
        self.computed = 0
        self.hits = 0
        detector_print = self.detector.fingerprint if self.detector is not None else "none"
        self._fingerprint = f"{self.config.fingerprint()}|detector={detector_print}"
        self._key_memo: dict[tuple, str] = {}

    # ------------------------------------------------------------------ keys
    def key(self, record: SampleRecord) -> str:
        """Content hash of the record's files and annotations plus the pipeline."""
        stats = []
        for p in (record.image_path, record.mask_path):
            if p is not None:
                st = os.stat(source_file(p)[0])  # a DICOM frame path names its file
                stats.append((str(p), st.st_size, st.st_mtime_ns))
        memo_key = (tuple(stats), record.boxes.tobytes(), record.labels.tobytes())
        cached = self._key_memo.get(memo_key)
        if cached is not None:
            return cached
        h = hashlib.blake2b(digest_size=20)
        h.update(self._fingerprint.encode())
        for p in (record.image_path, record.mask_path):
            h.update(b"\x00file\x00")
            if p is not None:
                file, frame = source_file(p)
                h.update(file.read_bytes())
                if frame is not None:  # frames of one DICOM file differ
                    h.update(f"\x00frame\x00{frame}".encode())
        h.update(np.ascontiguousarray(record.boxes, dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(record.labels, dtype=np.int64).tobytes())
        if record.segmentation is not None:
            h.update(json.dumps(record.segmentation, sort_keys=True).encode())
        digest = h.hexdigest()
        self._key_memo[memo_key] = digest
        return digest

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.png", d / f"{key}.npz"

    # ------------------------------------------------------------------ access
    def get(self, record: SampleRecord) -> tuple[Sample, PreprocessInfo]:
        """The preprocessed sample of ``record`` (from the cache when present).

        Raises whatever the loader raises for an unreadable file (callers decide to
        skip and count it).
        """
        key = self.key(record)
        img_path, npz_path = self._paths(key)
        if img_path.exists() and npz_path.exists():
            try:
                sample, info = self._read(record, img_path, npz_path)
                self.hits += 1
                return sample, info
            except (OSError, ValueError, KeyError) as exc:  # damaged entry: recompute
                logger.warning("cache entry %s unreadable (%s); recomputing", npz_path, exc)
        sample = self.loader(record)
        out, info = preprocess_sample(sample, self.config, detector=self.detector)
        self._write(out, info, img_path, npz_path)
        self.computed += 1
        return out, info

    def _write(self, sample: Sample, info: PreprocessInfo, img_path: Path, npz_path: Path) -> None:
        atomic_write_bytes(img_path, encode_png(sample.image, img_path), durable=False)
        buf = io.BytesIO()
        np.savez(
            buf,
            mask=np.packbits(sample.mask, axis=None),
            shape=np.asarray(sample.mask.shape, np.int64),
            boxes=sample.boxes.astype(np.float32),
            labels=sample.labels.astype(np.int64),
            info=np.asarray(json.dumps(info.to_dict())),
        )
        atomic_write_bytes(npz_path, buf.getvalue(), durable=False)

    @staticmethod
    def _read(
        record: SampleRecord, img_path: Path, npz_path: Path
    ) -> tuple[Sample, PreprocessInfo]:
        img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{img_path}: not a readable PNG")
        with np.load(npz_path) as z:
            h, w = (int(v) for v in z["shape"])
            mask = np.unpackbits(z["mask"], count=h * w).reshape(h, w).astype(bool)
            boxes, labels = z["boxes"], z["labels"]
            info = PreprocessInfo.from_dict(json.loads(str(z["info"])))
        if img.shape[:2] != (h, w):
            raise ValueError(f"{img_path}: image and mask sizes differ")
        sample = Sample(
            image=cv2.cvtColor(img, cv2.COLOR_BGR2RGB),
            mask=mask,
            boxes=boxes.astype(np.float32).reshape(-1, 4),
            labels=labels.astype(np.int64),
            meta=record.meta,
        )
        return sample, info


def cached_loader(cache: SiteCache) -> Loader:
    """A ``record -> Sample`` callable for ``DetectionDataset(loader=...)``."""

    def load(record: SampleRecord) -> Sample:
        return cache.get(record)[0]

    return load
