"""Same-source image-level negatives: a lesion crop and a lesion-free crop of one frame.

Scoring lesion frames of one data set against "normal" frames of another lets an
image-level classifier reach AUC 1.0 by telling the *sources* apart (resolution,
colour, overlays, field of view) instead of seeing the lesion. This module cuts both
classes out of the *same* lesion frames:

* a **normal crop**: a square that lies entirely outside the dilated lesion mask and
  the lesion boxes, holds few dark pixels (the black octagonal border, the black box
  in the lower-left corner) and avoids the frame's corner triangles;
* a **lesion crop** of the *same size* from the same frame, centred on the largest
  lesion box with a random jitter, holding the whole box when the box fits (else at
  least ``min_box_coverage`` of it), under the same darkness / corner rule.

Frames where no such pair fits (the lesion fills the frame, the crop would be mostly
border) are skipped and counted by reason. Crops are planned once
(:func:`plan_crops`) into :class:`CropRecord` s, a :class:`~shared.data.sample.SampleRecord`
subclass, and decoded by :class:`CropLoader`, so they feed
:class:`~shared.data.dataset.DetectionDataset` (``loader=CropLoader(...)``) and the
existing evaluator unchanged; :func:`write_same_source_site` writes them as a Kvasir
layout site folder instead. Everything is deterministic given ``seed``: each frame
draws from its own generator keyed by the seed and the image file name, so the crops
of a frame do not depend on which other frames are planned.
"""

from __future__ import annotations

import csv
import io
import math
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from ..util.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .sample import Sample, SampleMeta, SampleRecord
from .site import load_sample

__all__ = [
    "LESION_CROP",
    "NORMAL_CROP",
    "SKIP_NO_CLEAN_LESION_CROP",
    "SKIP_NO_FREE_CROP",
    "SKIP_NO_LESION",
    "Crop",
    "CropConfig",
    "CropLoader",
    "CropRecord",
    "SameSourceSet",
    "crop_frame",
    "crop_sample",
    "plan_crops",
    "same_source_samples",
    "write_same_source_site",
]

LESION_CROP = "lesion"
NORMAL_CROP = "normal"

#: the frame has no lesion box and an empty mask
SKIP_NO_LESION = "no_lesion"
#: no lesion-free crop of the minimum side fits (the lesion fills the frame, or the
#: free part is border / overlay)
SKIP_NO_FREE_CROP = "no_lesion_free_crop"
#: lesion-free crops exist, but no clean lesion crop of such a size does
SKIP_NO_CLEAN_LESION_CROP = "no_clean_lesion_crop"

#: ``sample -> (H, W) bool`` pixels no crop may touch (e.g. detected text overlays)
AvoidFn = Callable[[Sample], np.ndarray]


@dataclass(frozen=True)
class CropConfig:
    """How crops are chosen (sides are shares of the frame's shorter side).

    Attributes:
        min_side_frac: smallest crop side (default a third of the shorter side).
        context: wanted side = ``context`` x the longer side of the lesion box.
        min_box_coverage: a lesion crop smaller than the box must still hold this share
            of the box area, else a smaller side is not tried.
        jitter: lesion-crop centre offset from the box centre, at most this share of
            the side in x and in y (kept so that the box stays inside when it fits).
        dilate_frac: the lesion mask (and boxes) are dilated by this share of the
            shorter side before the normal crop must avoid them.
        dark_threshold: a pixel is dark when all its channels are below this value.
        max_dark_frac: a crop may hold at most this share of dark / corner pixels.
        corner_frac: the corner triangles with legs of this share of the shorter side
            count as dark (the octagonal field of view, corner overlays).
        sizes: number of sides tried, from the wanted side down to the minimum.
        tries: lesion-crop positions drawn per side.
    """

    min_side_frac: float = 1.0 / 3.0
    context: float = 1.25
    min_box_coverage: float = 0.6
    jitter: float = 0.15
    dilate_frac: float = 0.03
    dark_threshold: int = 30
    max_dark_frac: float = 0.1
    corner_frac: float = 0.2
    sizes: int = 6
    tries: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.min_side_frac <= 1.0:
            raise ValueError(f"min_side_frac must be in (0, 1], got {self.min_side_frac}")
        if not 0.0 < self.min_box_coverage <= 1.0:
            raise ValueError(f"min_box_coverage must be in (0, 1], got {self.min_box_coverage}")
        if self.context < 1.0 or self.jitter < 0 or self.dilate_frac < 0:
            raise ValueError("context must be >= 1, jitter and dilate_frac >= 0")
        if not 0.0 <= self.max_dark_frac <= 1.0:
            raise ValueError(f"max_dark_frac must be in [0, 1], got {self.max_dark_frac}")
        if self.sizes < 1 or self.tries < 1:
            raise ValueError("sizes and tries must be >= 1")


@dataclass(frozen=True)
class Crop:
    """A square crop ``[x0, x1) x [y0, y1)`` of a frame, in frame pixels."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def side(self) -> int:
        return self.x1 - self.x0

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass
class CropRecord(SampleRecord):
    """A planned crop of ``parent``: ``height``/``width``/``boxes`` are in crop pixels.

    ``kind`` is :data:`LESION_CROP` or :data:`NORMAL_CROP`; ``frame`` numbers the
    source frame within the :class:`SameSourceSet` (both crops of a frame share it).
    """

    parent: SampleRecord | None = None
    crop: Crop = Crop(0, 0, 0, 0)
    kind: str = ""
    frame: int = -1


@dataclass
class SameSourceSet:
    """The planned crops (a lesion crop, then its normal crop, per used frame)."""

    records: list[CropRecord]
    frames: int
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def used_frames(self) -> int:
        return len(self.records) // 2

    def counts(self) -> dict[str, int | dict[str, int]]:
        """JSON-ready frame / crop counts."""
        kinds = Counter(r.kind for r in self.records)
        return {
            "frames": self.frames,
            "used_frames": self.used_frames,
            "lesion_crops": kinds.get(LESION_CROP, 0),
            "normal_crops": kinds.get(NORMAL_CROP, 0),
            "skipped": dict(sorted(self.skipped.items())),
        }


# ------------------------------------------------------------------ geometry helpers
def _integral(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(a, axis=0, dtype=np.int64), axis=1, out=out[1:, 1:])
    return out


def _window_sums(ii: np.ndarray, s: int) -> np.ndarray:
    """Sum over every ``s x s`` window; entry ``[y, x]`` is the window at ``(x, y)``."""
    return ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]


def _rect_sum(ii: np.ndarray, x0: int, y0: int, s: int) -> int:
    """Sum over the ``s x s`` window at ``(x0, y0)``."""
    return int(ii[y0 + s, x0 + s] - ii[y0, x0 + s] - ii[y0 + s, x0] + ii[y0, x0])


def _corner_mask(h: int, w: int, leg: float) -> np.ndarray:
    """The four right-angled corner triangles whose legs are ``leg`` pixels."""
    if leg <= 0:
        return np.zeros((h, w), bool)
    y = np.arange(h, dtype=np.float64)[:, None] + 0.5
    x = np.arange(w, dtype=np.float64)[None, :] + 0.5
    dx = np.minimum(x, w - x)
    dy = np.minimum(y, h - y)
    return (dx + dy) < leg


def _lesion_pixels(sample: Sample) -> np.ndarray:
    """Mask union the box rectangles (a box without a mask still marks its lesion)."""
    h, w = sample.height, sample.width
    lesion = sample.mask.astype(bool).copy() if sample.mask.size else np.zeros((h, w), bool)
    for x0, y0, x1, y1 in np.asarray(sample.boxes, np.float64).reshape(-1, 4):
        xa, ya = max(0, math.floor(x0)), max(0, math.floor(y0))
        xb, yb = min(w, math.ceil(x1)), min(h, math.ceil(y1))
        lesion[ya:yb, xa:xb] = True
    return lesion


def _target_box(sample: Sample, lesion: np.ndarray) -> np.ndarray | None:
    """The largest box (the image-level label's box), else the mask's extent."""
    boxes = np.asarray(sample.boxes, np.float64).reshape(-1, 4)
    if len(boxes):
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(areas))]
    ys, xs = np.nonzero(lesion)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def _axis_range(b0: float, b1: float, s: int, length: int) -> tuple[int, int]:
    """Allowed crop starts on one axis: containing ``[b0, b1]`` when it fits, else
    inside it; always inside ``[0, length - s]``."""
    if s >= b1 - b0:
        lo, hi = math.ceil(b1 - s), math.floor(b0)
    else:
        lo, hi = math.floor(b0), math.ceil(b1 - s)
    lo, hi = max(0, lo), min(length - s, hi)
    if lo > hi:  # only when rounding squeezes the range: clamp into the frame
        lo = hi = min(max(0, lo), length - s)
    return lo, hi


def frame_rng(seed: int, key: str) -> np.random.Generator:
    """The generator of one frame: depends on the seed and the frame's key only."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8"))])


def crop_frame(
    sample: Sample,
    rng: np.random.Generator,
    config: CropConfig = CropConfig(),
    *,
    avoid: np.ndarray | None = None,
) -> tuple[Crop, Crop] | str:
    """Plan ``(lesion crop, normal crop)`` of one frame, or the skip reason.

    ``avoid`` marks pixels neither crop may touch (e.g. burnt-in text); the normal
    crop holds no pixel of the dilated lesion mask / boxes; both crops hold at most
    ``max_dark_frac`` dark or corner pixels and have the same side.
    """
    h, w = sample.height, sample.width
    short = min(h, w)
    lesion = _lesion_pixels(sample)
    box = _target_box(sample, lesion)
    if box is None:
        return SKIP_NO_LESION
    min_side = max(1, math.ceil(config.min_side_frac * short))

    radius = round(config.dilate_frac * short)
    if radius > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        forbidden = cv2.dilate(lesion.astype(np.uint8), kernel) > 0
    else:
        forbidden = lesion
    dark = sample.image.max(axis=2) < config.dark_threshold
    dark |= _corner_mask(h, w, config.corner_frac * short)
    hard = np.zeros((h, w), bool) if avoid is None else np.asarray(avoid, bool)
    if hard.shape != (h, w):
        raise ValueError(f"avoid mask is {hard.shape}, the frame is {(h, w)}")
    ii_forbidden = _integral(forbidden | hard)
    ii_hard = _integral(hard)
    ii_dark = _integral(dark)

    def normal_ok(s: int) -> np.ndarray:
        return (_window_sums(ii_forbidden, s) == 0) & (
            _window_sums(ii_dark, s) <= config.max_dark_frac * s * s
        )

    if not normal_ok(min_side).any():
        return SKIP_NO_FREE_CROP

    bx0, by0, bx1, by1 = (float(v) for v in box)
    bw, bh = max(bx1 - bx0, 1.0), max(by1 - by0, 1.0)
    wanted = min(short, max(min_side, math.ceil(config.context * max(bw, bh))))
    sides = sorted({int(round(v)) for v in np.linspace(wanted, min_side, config.sizes)},
                   reverse=True)
    for s in sides:
        if min(1.0, s / bw) * min(1.0, s / bh) < config.min_box_coverage:
            break
        ok = normal_ok(s)
        if not ok.any():
            continue
        xlo, xhi = _axis_range(bx0, bx1, s, w)
        ylo, yhi = _axis_range(by0, by1, s, h)
        cx, cy = (bx0 + bx1) / 2.0, (by0 + by1) / 2.0
        lesion_crop = None
        for _ in range(config.tries):
            jx, jy = rng.uniform(-config.jitter, config.jitter, 2) * s
            x0 = int(np.clip(round(cx + jx - s / 2.0), xlo, xhi))
            y0 = int(np.clip(round(cy + jy - s / 2.0), ylo, yhi))
            if _rect_sum(ii_hard, x0, y0, s):
                continue
            if _rect_sum(ii_dark, x0, y0, s) <= config.max_dark_frac * s * s:
                lesion_crop = Crop(x0, y0, x0 + s, y0 + s)
                break
        if lesion_crop is None:
            continue
        ys, xs = np.nonzero(ok)
        k = int(rng.integers(len(xs)))
        normal_crop = Crop(int(xs[k]), int(ys[k]), int(xs[k]) + s, int(ys[k]) + s)
        return lesion_crop, normal_crop
    return SKIP_NO_CLEAN_LESION_CROP


def _crop_boxes(
    boxes: np.ndarray, labels: np.ndarray, morphs: Sequence[str], crop: Crop
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Boxes clipped to the crop (crop pixels); boxes with no area inside are dropped."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(b):
        return b, np.asarray(labels, np.int64).reshape(-1), []
    off = np.array([crop.x0, crop.y0, crop.x0, crop.y0], np.float32)
    c = np.clip(b - off, 0, crop.side)
    keep = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
    morph_list = list(morphs) + [""] * len(b)
    return (
        c[keep].astype(np.float32),
        np.asarray(labels, np.int64)[keep],
        [m for m, k in zip(morph_list[: len(b)], keep) if k],
    )


def crop_sample(sample: Sample, crop: Crop, kind: str) -> Sample:
    """Cut ``crop`` out of ``sample``: a lesion crop keeps its (clipped) mask and boxes,
    a normal crop gets an empty mask and no boxes."""
    if kind not in (LESION_CROP, NORMAL_CROP):
        raise ValueError(f"kind must be {LESION_CROP!r} or {NORMAL_CROP!r}, got {kind!r}")
    sl = (slice(crop.y0, crop.y1), slice(crop.x0, crop.x1))
    image = np.ascontiguousarray(sample.image[sl])
    if image.shape[:2] != (crop.side, crop.side):
        raise ValueError(f"crop {crop.as_tuple()} leaves the {sample.width}x{sample.height} frame")
    if kind == NORMAL_CROP:
        return Sample(
            image=image,
            mask=np.zeros(image.shape[:2], bool),
            boxes=np.zeros((0, 4), np.float32),
            labels=np.zeros((0,), np.int64),
            meta=replace(sample.meta, morphologies=[]),
        )
    boxes, labels, morphs = _crop_boxes(
        sample.boxes, sample.labels, sample.meta.morphologies, crop
    )
    return Sample(
        image=image,
        mask=np.ascontiguousarray(sample.mask[sl]).astype(bool),
        boxes=boxes,
        labels=labels,
        meta=replace(sample.meta, morphologies=morphs),
    )


def _crop_record(parent: SampleRecord, crop: Crop, kind: str, frame: int) -> CropRecord:
    if kind == LESION_CROP:
        boxes, labels, morphs = _crop_boxes(
            parent.boxes, parent.labels, parent.meta.morphologies, crop
        )
    else:
        boxes, labels, morphs = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), []
    x0, y0, x1, y1 = crop.as_tuple()
    meta: SampleMeta = replace(
        parent.meta, source=f"{parent.meta.source}#{kind}@{x0},{y0},{x1},{y1}",
        morphologies=morphs,
    )  # fmt: skip
    return CropRecord(
        image_path=parent.image_path,
        mask_path=parent.mask_path if kind == LESION_CROP else None,
        height=crop.side,
        width=crop.side,
        boxes=boxes,
        labels=labels,
        meta=meta,
        parent=parent,
        crop=crop,
        kind=kind,
        frame=frame,
    )


def frame_key(record: SampleRecord) -> str:
    """What a frame's generator is keyed by: its image file name (machine independent)."""
    return Path(record.image_path).name


def plan_crops(
    records: Sequence[SampleRecord],
    *,
    seed: int = 0,
    config: CropConfig = CropConfig(),
    loader: Callable[[SampleRecord], Sample] = load_sample,
    avoid: AvoidFn | None = None,
) -> SameSourceSet:
    """Plan a lesion crop and a same-size lesion-free crop for each lesion frame.

    Args:
        records: the frames (usually the evaluation split of a lesion site).
        seed: the crops are a function of ``seed`` and each frame alone.
        config: crop rules (:class:`CropConfig`).
        loader: ``record -> Sample`` used to decode the frames (pass the run's
            preprocessing loader to crop preprocessed frames; :class:`CropLoader`
            must then get the same one).
        avoid: ``sample -> (H, W) bool`` pixels no crop may touch.
    """
    out: list[CropRecord] = []
    skipped: Counter[str] = Counter()
    for record in records:
        if not len(record.boxes) and record.mask_path is None and not record.segmentation:
            skipped[SKIP_NO_LESION] += 1
            continue
        sample = loader(record)
        mask = None if avoid is None else avoid(sample)
        plan = crop_frame(sample, frame_rng(seed, frame_key(record)), config, avoid=mask)
        if isinstance(plan, str):
            skipped[plan] += 1
            continue
        frame = len(out) // 2
        out.append(_crop_record(record, plan[0], LESION_CROP, frame))
        out.append(_crop_record(record, plan[1], NORMAL_CROP, frame))
    return SameSourceSet(records=out, frames=len(records), skipped=dict(skipped))


@dataclass
class CropLoader:
    """``CropRecord -> Sample``: decode the parent frame with ``loader``, then crop.

    Plain records pass through ``loader`` unchanged, so one dataset may mix both.
    Picklable when ``loader`` is (DataLoader workers).
    """

    loader: Callable[[SampleRecord], Sample] = load_sample

    def __call__(self, record: SampleRecord) -> Sample:
        if not isinstance(record, CropRecord):
            return self.loader(record)
        if record.parent is None:
            raise ValueError(f"{record.image_path}: crop record without its parent frame")
        sample = crop_sample(self.loader(record.parent), record.crop, record.kind)
        sample.meta = record.meta
        return sample


def same_source_samples(
    records: Sequence[SampleRecord],
    *,
    seed: int = 0,
    config: CropConfig = CropConfig(),
    loader: Callable[[SampleRecord], Sample] = load_sample,
    avoid: AvoidFn | None = None,
) -> Iterator[Sample]:
    """The in-memory crops of :func:`plan_crops` (lesion crop, then normal crop)."""
    plan = plan_crops(records, seed=seed, config=config, loader=loader, avoid=avoid)
    load = CropLoader(loader)
    for record in plan.records:
        yield load(record)


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def write_same_source_site(
    plan: SameSourceSet,
    out_dir: Path | str,
    class_names: Sequence[str],
    *,
    loader: Callable[[SampleRecord], Sample] = load_sample,
) -> Path:
    """Write the crops as a Kvasir layout site folder that :func:`scan_site` reads.

    ``images/<frame stem>_<kind>.png``, ``masks/`` (empty for normal crops),
    ``same_source_bboxes.json`` (class names from ``class_names``, labels ``1..K``)
    and ``manifest.csv`` whose ``patient_id`` is the source frame, so a split keeps
    both crops of a frame together. Write it outside the repository: the crops are
    derivatives of the source data.
    """
    out = Path(out_dir)
    load = CropLoader(loader)
    bboxes: dict[str, dict] = {}
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["image", "mask", "label", "morphology", "patient_id"])
    for record in plan.records:
        sample = load(record)
        stem = f"{Path(record.image_path).stem}_{record.kind}"
        atomic_write_bytes(out / "images" / f"{stem}.png",
                           _png(cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)), durable=False)
        atomic_write_bytes(out / "masks" / f"{stem}.png",
                           _png(sample.mask.astype(np.uint8) * 255), durable=False)
        morphs = list(sample.meta.morphologies) + [""] * len(sample.boxes)
        bboxes[stem] = {
            "height": sample.height,
            "width": sample.width,
            "bbox": [
                {"label": class_names[int(lbl) - 1], "xmin": float(b[0]), "ymin": float(b[1]),
                 "xmax": float(b[2]), "ymax": float(b[3]), "morphology": m}
                for b, lbl, m in zip(sample.boxes, sample.labels, morphs)
            ],
        }  # fmt: skip
        writer.writerow([f"images/{stem}.png", f"masks/{stem}.png", "", "",
                         f"frame-{Path(record.image_path).stem}"])
    atomic_write_json(out / "same_source_bboxes.json", bboxes)
    atomic_write_text(out / "manifest.csv", rows.getvalue())
    return out
