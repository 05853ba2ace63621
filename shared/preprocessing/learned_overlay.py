"""Optional learned overlay detector: the project's improved SSD trained on composites.

The paper (section 2.1.2) finds overlay noise with a learned detector (YOLOv3). This
module trains the project's own detector (:mod:`shared.model`, ``tiny`` preset by
default) on *composites*: overlay-free frames (real ones from a folder, or synthetic
frames rendered with ``overlays=False``) with synthetic overlays drawn on top, whose
boxes and types are therefore exact:

* **border** — black outside an octagonal or circular field of view; one box per
  side strip outside the field of view's bounding box (the synthetic generator's
  convention; strips thinner than 3 % of the side are drawn but not labelled);
* **text** — ``cv2.putText`` date/time/device lines in white or grey, top-left and
  sometimes top-right, one tight box per line;
* **box** — a black panel in the lower-left corner (sometimes with grey graphics);
* **tube** — a shaded grey instrument entering from the right or bottom edge.

:class:`LearnedDetector` (registered as ``"learned"``) runs the model on the resized
frame and maps boxes back to frame pixels. Its masks combine both detectors: the
field-of-view ``content`` mask is the classical detector's convex-hull estimate
(pixel-exact on octagons and circles, which axis-aligned boxes are not) minus every
learned border and panel box; the ``text`` mask is the bright, low-saturation pixels
inside learned text boxes. Tubes are reported as boxes only (the crop never cuts
content for them, as with the classical detector).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from endofed.shared.data.dataset import DetectionDataset
from endofed.shared.data.sample import Sample, SampleMeta, SampleRecord
from endofed.shared.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from endofed.shared.preprocessing.config import PreprocessConfig
from endofed.shared.preprocessing.overlay import (
    OVERLAY_TYPES,
    ClassicalDetector,
    OverlayBox,
    OverlayDetection,
    register_detector,
)

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "overlay-detector"
#: Detector classes; label ``i + 1`` is ``CLASS_NAMES[i]``.
CLASS_NAMES: tuple[str, ...] = OVERLAY_TYPES
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_FONT = cv2.FONT_HERSHEY_SIMPLEX


# --------------------------------------------------------------------------------------
# composites
# --------------------------------------------------------------------------------------


@dataclass
class Composite:
    """A composite frame: ``image`` (uint8 RGB), ``boxes`` (N, 4) XYXY, ``types``, and
    ``overlay_mask`` (bool, border + panel pixels)."""

    image: np.ndarray
    boxes: np.ndarray
    types: list[str]
    overlay_mask: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return np.array([CLASS_NAMES.index(t) + 1 for t in self.types], np.int64)


def list_backgrounds(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted); raises when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"background folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"background folder {folder} holds no images {IMAGE_EXTENSIONS}")
    return files


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read background image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _field_of_view(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, tuple]:
    """Octagonal or circular field-of-view mask (uint8 {0,1}) and its bounding box."""
    x0 = int(round(w * rng.uniform(0.06, 0.22)))
    x1 = w - int(round(w * rng.uniform(0.0, 0.12)))
    y0 = int(round(h * rng.uniform(0.0, 0.08)))
    y1 = h - int(round(h * rng.uniform(0.0, 0.08)))
    fov = np.zeros((h, w), np.uint8)
    if rng.random() < 0.6:
        c = int(round(min(x1 - x0, y1 - y0) * rng.uniform(0.12, 0.26)))
        pts = np.array(
            [[x0 + c, y0], [x1 - 1 - c, y0], [x1 - 1, y0 + c], [x1 - 1, y1 - 1 - c],
             [x1 - 1 - c, y1 - 1], [x0 + c, y1 - 1], [x0, y1 - 1 - c], [x0, y0 + c]],
            np.int32,
        )
        cv2.fillPoly(fov, [pts], 1)
    else:
        cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
        r = max(x1 - x0, y1 - y0) / 2 * rng.uniform(0.98, 1.1)
        cv2.circle(fov, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
        fov[:, :x0] = 0
        fov[:, x1:] = 0
        fov[:y0] = 0
        fov[y1:] = 0
    box = _bbox(fov > 0) or (x0, y0, x1, y1)
    return fov, box


def _tube(rng: np.random.Generator, img: np.ndarray, fov_box: tuple) -> np.ndarray:
    """Draw a shaded grey tube entering from the right or bottom; return its mask."""
    h, w = img.shape[:2]
    s = min(h, w)
    fx0, fy0, fx1, fy1 = fov_box
    width = s * rng.uniform(0.07, 0.13)
    length = s * rng.uniform(0.22, 0.4)
    if rng.random() < 0.5:
        start = np.array([fx1 + width, rng.uniform(fy0 + 0.5 * (fy1 - fy0), fy1 - width)])
        ang = math.pi + rng.uniform(-0.5, 0.3)
    else:
        start = np.array([rng.uniform(fx0 + 0.5 * (fx1 - fx0), fx1 - width), fy1 + width])
        ang = -math.pi / 2 + rng.uniform(-0.6, 0.0)
    d = np.array([math.cos(ang), math.sin(ang)])
    nrm = np.array([-d[1], d[0]])
    tip = start + d * (length + width)
    quad = np.array([start + nrm * width / 2, tip + nrm * width / 2,
                     tip - nrm * width / 2, start - nrm * width / 2])
    tm = np.zeros((h, w), np.uint8)
    cv2.fillPoly(tm, [np.round(quad).astype(np.int32)], 1)
    cv2.circle(tm, tuple(int(v) for v in np.round(tip)), int(width / 2), 1, -1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    across = ((xx - start[0]) * nrm[0] + (yy - start[1]) * nrm[1]) / (width / 2)
    shade = np.clip(1 - 0.45 * across**2, 0.4, 1) + 0.35 * np.exp(-((across + 0.35) / 0.15) ** 2)
    base = np.array([150, 158, 168], np.float32) * rng.uniform(0.8, 1.15)
    colour = np.clip(base * shade[..., None], 0, 255).astype(np.uint8)
    m = tm > 0
    img[m] = colour[m]
    return m


def _text_strings(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    day, month, year = (int(v) for v in rng.integers((1, 1, 2005), (29, 13, 2025)))
    hh, mm, ss = (int(v) for v in rng.integers(0, (24, 60, 60)))
    left = [f"{day:02d}/{month:02d}/{year}", f"{hh:02d}:{mm:02d}:{ss:02d}"]
    extras = ["CVP:5", "Q:N", "Ef:B4", "IR:1", "OLYMPUS", "FUJINON", "PENTAX", "Cr:N"]
    left += list(rng.choice(extras, size=int(rng.integers(0, 3)), replace=False))
    right = [f"{int(rng.integers(0, 99)):02d}:{int(rng.integers(0, 60)):02d}", "A5"]
    return left, right[: int(rng.integers(0, 3))]


def composite(
    rng: np.random.Generator, background: np.ndarray, size: int | tuple[int, int] = 256
) -> Composite:
    """Draw synthetic overlays onto an overlay-free ``background`` (resized to ``size``).

    Returns the composite with the exact box and type of every overlay (see the module
    docstring for what is drawn and how it is labelled).
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    img = cv2.resize(background, (w, h), interpolation=cv2.INTER_AREA).copy()
    s = min(h, w)
    boxes: list[tuple[int, int, int, int]] = []
    types: list[str] = []

    fov, fov_box = _field_of_view(rng, h, w)
    fx0, fy0, fx1, fy1 = fov_box
    tube_mask = None
    if rng.random() < 0.45:
        tube_mask = _tube(rng, img, fov_box)
    dark = rng.integers(0, 4, (h, w, 3), dtype=np.uint8)
    outside = fov == 0
    img[outside] = dark[outside]
    overlay = outside.copy()
    min_strip = max(2, int(round(0.03 * s)))
    for b in ((0, 0, fx0, h), (fx1, 0, w, h), (fx0, 0, fx1, fy0), (fx0, fy1, fx1, h)):
        thick = min(b[2] - b[0], b[3] - b[1])
        if thick >= min_strip:
            boxes.append(b)
            types.append("border")
    if tube_mask is not None:
        tb = _bbox(tube_mask & (fov > 0))
        if tb is not None and (tb[2] - tb[0]) * (tb[3] - tb[1]) >= (0.04 * s) ** 2:
            boxes.append(tb)
            types.append("tube")
    if rng.random() < 0.5:
        bw = int(round(w * rng.uniform(0.18, 0.32)))
        bh = int(round(h * rng.uniform(0.2, 0.34)))
        pb = (0, h - bh, bw, h)
        img[pb[1]:, : pb[2]] = dark[pb[1]:, : pb[2]]
        overlay[pb[1]:, : pb[2]] = True
        if rng.random() < 0.5:  # graphics inside the panel (scope diagram)
            g = int(rng.integers(80, 200))
            cx, cy = bw // 2, h - bh // 2
            cv2.circle(img, (cx, cy), max(2, bh // 5), (g, g, g), 1, cv2.LINE_AA)
        boxes.append(pb)
        types.append("box")
    # text: glyph height 3-5 % of the side, so lines survive resizing to the model size
    target = s * rng.uniform(0.03, 0.05)
    (_, th0), _ = cv2.getTextSize("0", _FONT, 1.0, 1)
    scale = target / th0
    thick = max(1, int(round(target / 10)))
    grey = int(rng.integers(170, 256))
    left, right = _text_strings(rng)
    step = int(round(target * rng.uniform(1.7, 2.2)))
    x = max(1, int(round(w * rng.uniform(0.005, 0.03))))
    y = int(round(h * rng.uniform(0.07, 0.14)))
    places = [(x, y + i * step, t) for i, t in enumerate(left)]
    yr = int(round(h * rng.uniform(0.06, 0.1)))
    for i, t in enumerate(right):
        (tw, _), _ = cv2.getTextSize(t, _FONT, scale, thick)
        places.append((w - tw - max(2, int(w * 0.015)), yr + i * step, t))
    for tx, ty, t in places:
        layer = np.zeros((h, w), np.uint8)
        cv2.putText(layer, t, (tx, ty), _FONT, scale, 255, thick, cv2.LINE_AA)
        tb = _bbox(layer > 0)
        if tb is None or tb[3] > h or tb[2] - tb[0] < 4:
            continue
        a = (layer.astype(np.float32) / 255)[..., None]
        img[:] = np.clip(img * (1 - a) + grey * a, 0, 255).astype(np.uint8)
        boxes.append(tb)
        types.append("text")
    return Composite(
        image=img,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        types=types,
        overlay_mask=overlay,
    )


class _Backgrounds:
    """Overlay-free frames: files from a folder (cycled) or synthetic clean frames."""

    def __init__(self, folder: str | Path | None, seed: int, size: int) -> None:
        self.files = list_backgrounds(folder) if folder is not None else []
        self.seed = seed
        self.size = size

    def __call__(self, index: int) -> np.ndarray:
        if self.files:
            return _read_rgb(self.files[index % len(self.files)])
        from endofed.shared.data.synthetic import device_profile_for_site, render_frame

        rng = np.random.default_rng([self.seed, 7, index])
        frame = render_frame(
            rng, size=self.size, profile=device_profile_for_site(index % 4, seed=self.seed),
            overlays=False,
        )
        return frame.image


def make_composites(
    n_images: int,
    *,
    backgrounds: str | Path | None = None,
    size: int = 256,
    seed: int = 0,
) -> list[Composite]:
    """``n_images`` composites (deterministic in ``seed``); see :func:`composite`."""
    bg = _Backgrounds(backgrounds, seed, size)
    out = []
    for i in range(n_images):
        rng = np.random.default_rng([seed, 11, i])
        out.append(composite(rng, bg(i), size))
    return out


class _CompositeLoader:
    """``record -> Sample`` for :class:`DetectionDataset` over in-memory composites."""

    def __init__(self, composites: Sequence[Composite]) -> None:
        self.composites = list(composites)

    def __call__(self, record: SampleRecord) -> Sample:
        c = self.composites[int(record.image_path.name)]
        return Sample(image=c.image, mask=c.overlay_mask, boxes=c.boxes, labels=c.labels,
                      meta=record.meta)


def composite_dataset(
    composites: Sequence[Composite], *, image_size: int, train: bool, max_boxes: int = 16
) -> DetectionDataset:
    """A :class:`DetectionDataset` over composites (the segmentation target is the
    border + panel mask). Training augmentation is limited to flips and colour
    jitter: rotation and zoom-out would paint grey canvas that is neither border nor
    content."""
    records = []
    for i, c in enumerate(composites):
        h, w = c.image.shape[:2]
        records.append(SampleRecord(
            image_path=Path(str(i)), mask_path=None, height=h, width=w, boxes=c.boxes,
            labels=c.labels, meta=SampleMeta(source=f"composite-{i}"),
        ))
    transform = build_transforms(
        image_size, train=train, vflip=0.0, rotation=0.0, zoom_out_p=0.0, zoom_in_p=0.0,
    )
    return DetectionDataset(
        records, image_size=image_size, train=train, max_boxes=max_boxes,
        morphology_names=[], transform=transform, loader=_CompositeLoader(composites),
        work_scale=1.0,
    )


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------


def train_overlay_detector(
    out_file: str | Path,
    *,
    backgrounds: str | Path | None = None,
    n_images: int = 256,
    image_size: int = 128,
    epochs: int = 20,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    preset: str = "tiny",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Path:
    """Train an overlay detector on composites and save it to ``out_file``.

    The checkpoint's ``extra`` holds ``{"kind": "overlay-detector", "class_names":
    [...], "image_size": S}`` (what :class:`LearnedDetector` checks).
    """
    from torch.utils.data import DataLoader

    from endofed.shared.config import TrainConfig
    from endofed.shared.engine import Trainer, resolve_device
    from endofed.shared.model import build_model, save_checkpoint

    if n_images < 1 or epochs < 1:
        raise ValueError(f"n_images and epochs must be >= 1, got {n_images} and {epochs}")
    dev = torch.device(device) if device is not None else resolve_device("auto")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    comps = make_composites(n_images, backgrounds=backgrounds, size=2 * image_size, seed=seed)
    dataset = composite_dataset(comps, image_size=image_size, train=True)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=min(batch_size, n_images), shuffle=True,
                        collate_fn=dataset.collate_fn(), generator=gen, drop_last=False)
    model = build_model(preset=preset, num_classes=len(CLASS_NAMES), image_size=image_size,
                        class_names=CLASS_NAMES).to(dev)
    config = TrainConfig(epochs=epochs, learning_rate=learning_rate, seed=seed,
                         warmup_steps=min(20, len(loader) * epochs // 10))
    config.validate()
    result = Trainer(model, config, device=dev, progress=progress).fit(loader, epochs=epochs)
    last = result.epochs[-1] if result.epochs else None
    logger.info("overlay detector: %d composites, %d epochs in %.1f s (last loss %.3f)",
                n_images, epochs, time.perf_counter() - t0, last.loss if last else float("nan"))
    extra: dict[str, Any] = {
        "kind": CHECKPOINT_KIND,
        "class_names": list(CLASS_NAMES),
        "image_size": int(image_size),
        "n_images": int(n_images),
        "epochs": int(epochs),
        "backgrounds": "folder" if backgrounds is not None else "synthetic",
        "seed": int(seed),
    }
    return save_checkpoint(out_file, model.cpu(), extra=extra)


# --------------------------------------------------------------------------------------
# detector
# --------------------------------------------------------------------------------------


class LearnedDetector:
    """Overlay detector backed by a checkpoint of :func:`train_overlay_detector`.

    Args:
        config: ``config.detector_path`` names the checkpoint.
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
        from endofed.shared.model import load_model_checkpoint, read_checkpoint

        self.config = config or PreprocessConfig()
        path = self.config.detector_path
        if not path:
            raise ValueError("the learned overlay detector needs PreprocessConfig.detector_path "
                             "(a file written by `endofed overlay train`)")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"overlay detector checkpoint {path} does not exist "
                                    "(train one with `endofed overlay train --out FILE`)")
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
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)

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


register_detector("learned", LearnedDetector)


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------


def overlay_recall(
    detector: LearnedDetector | Any,
    composites: Sequence[Composite],
    *,
    iou_thresh: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Recall per overlay type at IoU >= ``iou_thresh`` (a same-type detection must
    overlap the ground-truth box), and the share of detections that match a
    ground-truth box of their type (``precision``). ``detector`` maps an image to
    :class:`OverlayDetection` or a list of :class:`OverlayBox`."""
    from torchvision.ops import box_iou

    hits = {t: 0 for t in OVERLAY_TYPES}
    totals = {t: 0 for t in OVERLAY_TYPES}
    n_pred = {t: 0 for t in OVERLAY_TYPES}
    true_pred = {t: 0 for t in OVERLAY_TYPES}
    detections = 0
    for c in composites:
        pred = detector(c.image)
        pred_boxes = pred.boxes if isinstance(pred, OverlayDetection) else list(pred)
        detections += len(pred_boxes)
        for kind in OVERLAY_TYPES:
            gt = c.boxes[[t == kind for t in c.types]]
            pb = [b.xyxy for b in pred_boxes if b.type == kind]
            totals[kind] += len(gt)
            n_pred[kind] += len(pb)
            if len(gt) == 0 or not pb:
                continue
            iou = box_iou(torch.as_tensor(gt), torch.as_tensor(pb, dtype=torch.float32))
            hits[kind] += int((iou.max(dim=1).values >= iou_thresh).sum())
            true_pred[kind] += int((iou.max(dim=0).values >= iou_thresh).sum())
    nan = float("nan")
    out = {
        t: {"recall": hits[t] / totals[t] if totals[t] else nan,
            "found": hits[t], "total": totals[t],
            "precision": true_pred[t] / n_pred[t] if n_pred[t] else nan,
            "detections": n_pred[t]}
        for t in OVERLAY_TYPES
    }
    out["all"] = {"detections_per_image": detections / max(1, len(composites))}
    return out
