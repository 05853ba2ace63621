"""The case viewer: a run's model on one uploaded image, kept in memory only.

An upload (JPEG, PNG or DICOM) is decoded from the request's bytes with the site
reader's checks (size cap, header pixel cap before decoding, DICOM SOP class / transfer
syntax / pixel format); nothing is written to disk. Models are loaded with
:meth:`~endofed.shared.inference.Predictor.from_checkpoint` (``weights_only``, no code
from the file runs) and kept in a small LRU cache keyed by file and mtime.

Round checkpoints (``checkpoints/round_NNN.pt``) load through the same function, with
the operating point of that round (the shared loader reads it from ``rounds/``).
"""

from __future__ import annotations

import base64
import importlib
import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from endofed.server.dashboard.reader import RunInfo, RunsReader
from endofed.shared.data.layouts._base import (
    MAX_FILE_BYTES,
    ImageReadError,
    header_size,
)
from endofed.shared.inference import Prediction, Predictor, render_overlay
from endofed.shared.model.weights import UnreadableFileError

log = logging.getLogger(__name__)

#: Models kept loaded at once.
MAX_MODELS = 3


class CaseError(ValueError):
    """An upload or a model choice the viewer cannot use (one line for the page)."""


# ------------------------------------------------------------------------- decoding
def decode_upload(data: bytes, filename: str = "") -> np.ndarray:
    """RGB ``uint8 (H, W, 3)`` from an uploaded file's bytes; :class:`CaseError` if unusable.

    DICOM is recognised by its ``DICM`` preamble marker or a ``.dcm`` / ``.dicom`` name;
    anything else must be an image Pillow can read the header of (JPEG, PNG, ...).
    """
    if not data:
        raise CaseError("empty upload")
    if len(data) > MAX_FILE_BYTES:
        raise CaseError(f"upload of {len(data)} bytes is over the {MAX_FILE_BYTES} byte limit")
    try:
        if data[128:132] == b"DICM" or filename.lower().endswith((".dcm", ".dicom")):
            return _decode_dicom(data, filename)
        return _decode_image(data)
    except ImageReadError as exc:
        raise CaseError(f"{filename or 'upload'}: {exc}") from exc


def _decode_image(data: bytes) -> np.ndarray:
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        raise ImageReadError("truncated JPEG (no end-of-image marker)")
    header_size(data)  # pixel cap before any decoding
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageReadError("not a decodable image (corrupted or unsupported format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _decode_dicom(data: bytes, filename: str) -> np.ndarray:
    """The first frame of an in-memory DICOM file, with the site reader's header checks."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from endofed.shared.data import dicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ImageReadError(f"not a readable DICOM file ({exc})".splitlines()[0]) from exc
    return dicom.dataset_frame(ds, Path(filename or "upload.dcm"), 1)


# ------------------------------------------------------------------------- rendering
def render_view(image: np.ndarray, pred: Prediction, subtitle: str | None = None
                ) -> np.ndarray:
    """The predict view (boxes, contour, attention, verdict): the shared predict view
    when it is installed (``endofed.shared.predict_view.render_predict_view``), else the
    overlay of :func:`~endofed.shared.inference.render_overlay`."""
    try:
        module = importlib.import_module("endofed.shared.predict_view")
        render = module.render_predict_view
    except (ImportError, AttributeError):
        return render_overlay(image, pred)
    out = render(image, pred, subtitle=subtitle)
    if hasattr(out, "convert"):  # a PIL image
        out = np.asarray(out.convert("RGB"))
    return np.asarray(out)


def png_data_url(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def verdict_text(pred: Prediction) -> str:
    """The verdict in words with p and the threshold (the predict view's wording)."""
    try:
        from endofed.shared.predict_view import verdict_text as shared_verdict
    except ImportError:
        word = "Lesion found" if pred.lesion else "No lesion found"
        t = pred.threshold if pred.threshold is not None else 0.5
        return f"{word} (p={pred.lesion_probability:.3f}, threshold {t:.3f})"
    return shared_verdict(pred)


# ------------------------------------------------------------------------- models
class ModelCache:
    """Predictors of run models, at most ``max_models`` loaded (least recently used out)."""

    def __init__(self, reader: RunsReader, *, device: torch.device,
                 max_models: int = MAX_MODELS) -> None:
        self.reader = reader
        self.device = device
        self.max_models = max_models
        self._models: OrderedDict[tuple, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._models)

    def predictor(self, run: RunInfo, key: str) -> Predictor:
        """The predictor of model ``key`` (``final_model``, ``model_best``, ``round-N``)."""
        choice = next((m for m in self.reader.models(run) if m["key"] == key), None)
        if choice is None:
            raise CaseError(f"run {run.id} has no model {key!r}")
        path = run.path / choice["file"]
        st = path.stat()
        cache_key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            if cache_key in self._models:
                self._models.move_to_end(cache_key)
                return self._models[cache_key]
            try:
                predictor = self._load(run, key, path)
            except (UnreadableFileError, ValueError, KeyError) as exc:
                raise CaseError(str(exc).splitlines()[0]) from exc
            self._models[cache_key] = predictor
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return predictor

    def _load(self, run: RunInfo, key: str, path: Path) -> Predictor:
        # final / best model checkpoints and round checkpoints alike (a round's arrays
        # with that round's operating point from rounds/): the shared loader knows them
        return Predictor.from_checkpoint(path, device=self.device)


def predict_case(cache: ModelCache, run: RunInfo, model_key: str, data: bytes,
                 filename: str = "") -> dict[str, Any]:
    """Decode, predict and render one uploaded image; the JSON the viewer shows."""
    image = decode_upload(data, filename)
    predictor = cache.predictor(run, model_key)
    pred = predictor.predict(image, source=filename or "upload")
    record = pred.to_json()
    record.update({
        "run": run.id,
        "model": model_key,
        "verdict": verdict_text(pred),
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "view": png_data_url(render_view(image, pred, _describe(predictor, filename))),
        "provenance": predictor.provenance() if hasattr(predictor, "provenance") else {},
    })
    return record


def _describe(predictor: Predictor, filename: str) -> str:
    model = predictor.describe() if hasattr(predictor, "describe") else ""
    return " · ".join(x for x in (filename, model) if x)
