"""The learned overlay detector: a checkpoint of the project's improved SSD, run on a frame.

Boxes come from the model run on the resized frame, mapped back to frame pixels. The
masks combine both detectors: the field-of-view ``content`` mask is the classical
detector's convex-hull estimate (pixel-exact on octagons and circles, which
axis-aligned boxes are not) minus every learned border and panel box; the ``text``
mask is the bright, low-saturation pixels inside learned text boxes. Tubes are
reported as boxes only (the crop never cuts content for them, as with the classical
detector).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from endofed.shared.data.synthetic import OVERLAY_TYPES
from endofed.shared.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from endofed.shared.model import load_model_checkpoint, read_checkpoint
from endofed.shared.preprocessing import (
    ClassicalDetector,
    OverlayBox,
    OverlayDetection,
    PreprocessConfig,
)

#: Name of this detector in ``PreprocessConfig.detector``.
LEARNED = "learned"
#: ``extra["kind"]`` of an overlay-detector checkpoint.
CHECKPOINT_KIND = "overlay-detector"
#: Detector classes; label ``i + 1`` is ``CLASS_NAMES[i]``.
CLASS_NAMES: tuple[str, ...] = OVERLAY_TYPES


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LearnedDetector:
    """Overlay detector backed by a checkpoint of :func:`train_overlay_detector`.

    Args:
        config: ``config.detector_path`` names the checkpoint; ``config`` also
            configures the classical detector that provides the content mask.
        score_thresh: minimum detection score.
        device: where the model runs (default: CPU; preprocessing runs on site CPUs).
    """

    def __init__(
        self,
        config: PreprocessConfig | None = None,
        *,
        score_thresh: float = 0.2,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config or PreprocessConfig()
        path = self.config.detector_path
        if not path:
            raise ValueError("the learned overlay detector needs PreprocessConfig.detector_path "
                             "(a file written by `endofed overlay-detector train`)")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"overlay detector checkpoint {path} does not exist "
                                    "(train one with `endofed overlay-detector train --out FILE`)")
        try:
            ckpt = read_checkpoint(path)
        except Exception as exc:  # unreadable / foreign file
            raise ValueError(f"{path} is not an overlay-detector checkpoint: {exc}") from None
        extra = ckpt.get("extra") or {}
        if extra.get("kind") != CHECKPOINT_KIND:
            raise ValueError(f"{path} is an EndoFed checkpoint but not an overlay detector "
                             f"(extra kind {extra.get('kind')!r}, expected {CHECKPOINT_KIND!r})")
        self.class_names = tuple(extra.get("class_names", CLASS_NAMES))
        unknown = [c for c in self.class_names if c not in OVERLAY_TYPES]
        if unknown:
            raise ValueError(f"{path}: unknown overlay classes {unknown}")
        self.path = path
        self.image_size = int(extra["image_size"])
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = load_model_checkpoint(path, map_location=self.device).eval()
        self.score_thresh = float(score_thresh)
        self._classical = ClassicalDetector(self.config)
        self._weights = _file_digest(path)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)

    @property
    def fingerprint(self) -> str:
        """The weights (file digest), threshold and classical part: part of cache keys."""
        return (f"{LEARNED}:weights={self._weights}:score_thresh={self.score_thresh}"
                f":size={self.image_size}:{self._classical.fingerprint}")

    @torch.no_grad()
    def detect_boxes(self, image: np.ndarray) -> list[OverlayBox]:
        """Typed boxes in ``image`` pixels (the model output only, no masks)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        s = self.image_size
        small = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(small).to(self.device).permute(2, 0, 1).float().div_(255)
        x = ((x - self._mean) / self._std)[None]
        det = self.model.postprocess(self.model(x), score_thresh=self.score_thresh,
                                     image_size=s).detections[0]
        scale = torch.tensor([w / s, h / s, w / s, h / s], device=det["boxes"].device)
        boxes = (det["boxes"] * scale).cpu().numpy()
        out = []
        for (x0, y0, x1, y1), label, score in zip(
            boxes, det["labels"].tolist(), det["scores"].tolist(), strict=True
        ):
            out.append(OverlayBox(
                self.class_names[int(label) - 1],
                (float(np.clip(x0, 0, w)), float(np.clip(y0, 0, h)),
                 float(np.clip(x1, 0, w)), float(np.clip(y1, 0, h))),
                float(score),
            ))
        return out

    def __call__(self, image: np.ndarray) -> OverlayDetection:
        t = time.perf_counter()
        boxes = self.detect_boxes(image)
        t_model = (time.perf_counter() - t) * 1e3
        h, w = image.shape[:2]
        # content: the classical field-of-view hull, minus learned border/panel boxes
        t = time.perf_counter()
        classical = self._classical(image)
        content = (classical.content.copy() if classical.content is not None
                   else np.ones((h, w), bool))
        text = np.zeros((h, w), bool)
        minc = image.min(axis=2)
        spread = image.max(axis=2).astype(np.int16) - minc
        for b in boxes:
            x0, y0, x1, y1 = (int(round(v)) for v in b.xyxy)
            if b.type in ("border", "box"):
                content[y0:y1, x0:x1] = False
            elif b.type == "text":
                patch = minc[y0:y1, x0:x1]
                if patch.size:
                    thr = max(100, int(np.percentile(patch, 70)))
                    text[y0:y1, x0:x1] |= (patch > thr) & (spread[y0:y1, x0:x1] < 100)
        if text.any():  # cover anti-aliased stroke edges
            text = cv2.dilate(text.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        timings = {"model": t_model, "masks": (time.perf_counter() - t) * 1e3}
        return OverlayDetection(boxes=boxes, content=content, text=text, timings_ms=timings)
