"""The classical overlay detector: OpenCV primitives, a few milliseconds per frame.

The paper (section 2.1.2) finds overlays with a YOLOv3 detector; this is the fast
default (the learned one lives in :mod:`endofed.shared.overlay_detector`):

* **border** — near-black pixels outside the field of view. The field of view is the
  convex hull of the largest bright connected region (endoscope optics give a convex
  octagon or circle), so dark lumen and vignetting inside it are never "border".
  The outside region is cut at the hull's bounding box, giving one box per side
  strip and one per corner piece (the triangles of an octagonal mask).
* **box** — a near-black, nearly rectangular region inside the hull that touches the
  image edge (the black panel of the lower-left corner in Kvasir frames). Thin
  graphics drawn inside the panel are closed over (morphological closing).
* **text** — burnt-in characters: thin, bright, low-saturation strokes found with a
  white top-hat, grouped into lines; a line needs several strokes of text-like size
  and stroke width. Works over the black border and over tissue.
* **tube** — best effort: a large, low-saturation, grey-to-white elongated region
  touching the field-of-view edge (instruments, tubes, caps). Not reliable on
  pale mucosa or very dark frames: it reports a score, and the crop never cuts
  content for it.
"""

from __future__ import annotations

import cv2
import numpy as np

from endofed.shared.preprocessing.config import PreprocessConfig
from endofed.shared.preprocessing.overlay import OverlayBox, OverlayDetection, OverlayDetector

#: Name of this detector in ``PreprocessConfig.detector``.
CLASSICAL = "classical"

_WORK_SIZE = 256  # longest side of the image the border/panel search runs on


def _channel_min_max(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel min and max over the colour channels (much faster than numpy's axis=2)."""
    r, g, b = cv2.split(image)
    return cv2.min(cv2.min(r, g), b), cv2.max(cv2.max(r, g), b)


def _field_of_view(small: np.ndarray, dark_threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """(dark, hull) uint8 {0,255} masks at the working scale."""
    _, maxc = _channel_min_max(small)
    dark = cv2.compare(maxc, dark_threshold, cv2.CMP_LT)
    bright = cv2.bitwise_not(dark)
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    hull_mask = np.zeros_like(dark)
    if n <= 1:
        return dark, hull_mask  # all dark: nothing is content
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = np.where(lab == largest, 255, 0).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    cv2.fillConvexPoly(hull_mask, hull, 255)
    return dark, hull_mask


def _panels(dark: np.ndarray, hull: np.ndarray) -> list[tuple[int, int, int, int, float]]:
    """Black panels: the largest all-dark rectangle anchored at each image corner that
    reaches into the field-of-view hull (an octagon's corner triangle never does)."""
    h, w = dark.shape
    closed = cv2.morphologyEx(dark, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8)) > 0
    inside = cv2.erode(hull, np.ones((5, 5), np.uint8)) > 0  # rounding on the hull edge
    ys, xs = np.nonzero(hull)
    if len(xs) == 0:
        return []
    hx0, hy0, hx1, hy1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    margin = max(3, int(0.015 * max(h, w)))
    out = []
    for flip_y in (False, True):
        for flip_x in (False, True):
            d = closed[::-1] if flip_y else closed
            d = d[:, ::-1] if flip_x else d
            # leading dark run of each row, then the widest rectangle from the corner
            run = np.where(d.all(axis=1), w, np.argmin(d, axis=1))
            width = np.minimum.accumulate(run)
            # of all corner rectangles [0, width[k]) x [0, k], take the one covering the
            # most field-of-view hull (a side strip covers none, a panel a lot)
            ins = inside[::-1] if flip_y else inside
            ins = ins[:, ::-1] if flip_x else ins
            integral = cv2.integral(ins.astype(np.uint8))  # (h+1, w+1)
            covered = integral[np.arange(1, h + 1), width]
            k = int(np.argmax(covered))
            rw, rh = int(width[k]), k + 1
            if covered[k] < 30 or rw < 6 or rh < 6:
                continue
            share_inside = float(covered[k]) / float(rw * rh)
            x0, x1 = (w - rw, w) if flip_x else (0, rw)
            y0, y1 = (h - rh, h) if flip_y else (0, rh)
            # a panel reaches past the hull's bounding box edges by a clear margin on
            # both axes (a side strip or a rounding sliver does not)
            reach_x = (hx1 - x0) if flip_x else (x1 - hx0)
            reach_y = (hy1 - y0) if flip_y else (y1 - hy0)
            if min(reach_x, reach_y) < margin:
                continue
            out.append((x0, y0, x1, y1, min(1.0, share_inside / 0.6)))
    return out


def _border_boxes(
    outside: np.ndarray, hull: np.ndarray, min_area: float
) -> list[tuple[int, int, int, int, str]]:
    """Pieces of the outside-the-hull region, cut at the hull's bounding box.

    A corner piece that fills its bounding box (a panel the hull cut off, rather than
    the triangle of an octagonal mask) is typed ``"box"``, everything else ``"border"``.
    """
    h, w = outside.shape
    ys, xs = np.nonzero(hull)
    if len(xs) == 0:
        return [(0, 0, w, h, "border")] if np.count_nonzero(outside) > min_area else []
    fx0, fx1, fy0, fy1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    cut = outside.copy()
    # one-pixel cut lines along the hull's bounding box split the side strips (full
    # height) and the top/bottom strips (hull width) from the corner pieces
    if fx0 > 0:
        cut[:, fx0 - 1] = 0
    if fx1 < w:
        cut[:, fx1] = 0
    if fy0 > 0:
        cut[fy0 - 1, fx0:fx1] = 0
    if fy1 < h:
        cut[fy1, fx0:fx1] = 0
    n, _, stats, _ = cv2.connectedComponentsWithStats(cut, connectivity=4)
    out = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area < min_area:
            continue
        x0, y0, x1, y1 = x, y, x + bw, y + bh
        # pieces ending one pixel short of a cut line: give the line back
        x0 = x0 - 1 if x0 == fx1 + 1 else x0
        y0 = y0 - 1 if y0 == fy1 + 1 else y0
        x1 = x1 + 1 if x1 == fx0 - 1 else x1
        y1 = y1 + 1 if y1 == fy0 - 1 and x0 >= fx0 - 1 else y1
        strip = x1 <= fx0 or x0 >= fx1 or y1 <= fy0 or y0 >= fy1
        fill = area / float(bw * bh)
        out.append((x0, y0, x1, y1, "border" if strip or fill < 0.8 else "box"))
    return out


def _text(
    image: np.ndarray, content_full: np.ndarray | None
) -> tuple[list[tuple[int, int, int, int, float]], np.ndarray]:
    """Burnt-in text lines (xyxy, score) and the stroke mask, at full resolution."""
    h, w = image.shape[:2]
    minc, maxc = _channel_min_max(image)
    # white top-hat: bright structures thinner than the kernel
    k = max(7, int(round(min(h, w) / 60)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    tophat = cv2.morphologyEx(minc, cv2.MORPH_TOPHAT, kernel)
    sat_ok = cv2.subtract(maxc, minc) < 100  # JPEG chroma bleeds tissue red into thin text
    strokes = ((tophat > 35) & (minc > 90) & sat_ok).astype(np.uint8) * 255
    if not strokes.any():
        return [], np.zeros((h, w), bool)
    # group strokes into text lines
    gx = max(3, int(round(w / 90)))
    line_mask = cv2.dilate(strokes, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * gx + 1, 3)))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(line_mask, connectivity=8)
    ns, slab, sstats, _ = cv2.connectedComponentsWithStats(strokes, connectivity=8)
    max_h = max(12, int(0.07 * h))
    keep = np.zeros(n, bool)
    scores = np.zeros(n)
    # map each stroke component to its line
    if ns > 1:
        sh = sstats[1:, cv2.CC_STAT_HEIGHT]
        sw = sstats[1:, cv2.CC_STAT_WIDTH]
        sarea = sstats[1:, cv2.CC_STAT_AREA]
        rows, cols = np.nonzero(slab)
        first = np.zeros(ns, np.int64)
        first[slab[rows, cols]] = rows * w + cols
        line_of = lab.reshape(-1)[first[1:]]
    else:
        return [], np.zeros((h, w), bool)
    for i in range(1, n):
        bw, bh = stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT]
        if bh < 5 or bh > max_h or bw < 2.0 * bh:
            continue
        sel = line_of == i
        count = int(sel.sum())
        heights = sh[sel]
        tall = heights >= 0.45 * bh
        # small anti-aliased text merges into one component: then it must be wide
        if count == 0 or (count == 1 and sw[sel].max() < 2.5 * bh) or not tall.any():
            continue
        fill = sarea[sel].sum() / float(bw * bh)
        thin = sarea[sel] / np.maximum(sh[sel] + sw[sel], 1)  # ~ half the stroke width
        if fill > 0.6 or np.median(thin) > 3.5:
            continue
        # characters of one line share a height
        hs = heights[tall]
        spread = float(np.std(hs) / max(np.mean(hs), 1))
        score = float(np.clip(1.0 - spread, 0.0, 1.0)) * min(1.0, 0.5 + count / 8.0)
        if score < 0.3:
            continue
        keep[i] = True
        scores[i] = score
    boxes = []
    text_mask = np.zeros((h, w), bool)
    for i in np.nonzero(keep)[0]:
        x, y, bw, bh, _ = stats[i]
        region = (lab[y : y + bh, x : x + bw] == i) & (strokes[y : y + bh, x : x + bw] > 0)
        text_mask[y : y + bh, x : x + bw] |= region
        ys, xs = np.nonzero(region)  # tight box of the strokes, not of the dilated line
        boxes.append(
            (int(x + xs.min()), int(y + ys.min()), int(x + xs.max() + 1), int(y + ys.max() + 1),
             float(scores[i]))
        )
    return boxes, text_mask


def _tube(
    small: np.ndarray, hull: np.ndarray, content: np.ndarray
) -> list[tuple[int, int, int, int, float]]:
    """Best-effort instrument/tube: large grey elongated region touching the hull edge."""
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    s, v = hsv[..., 1], hsv[..., 2]
    grey = ((s < 50) & (v > 70) & (content > 0)).astype(np.uint8) * 255
    grey = cv2.morphologyEx(grey, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(grey, connectivity=8)
    edge = cv2.subtract(hull, cv2.erode(hull, np.ones((7, 7), np.uint8)))
    area_content = max(1, int(np.count_nonzero(content)))
    out = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if area < 0.02 * area_content:
            continue
        comp = (lab == i).astype(np.uint8)
        if not np.any(comp & (edge > 0)):
            continue
        (_, _), (rw, rh), _ = cv2.minAreaRect(cv2.findNonZero(comp))
        elong = max(rw, rh) / max(1.0, min(rw, rh))
        if elong < 1.8:
            continue
        score = float(min(1.0, elong / 4.0))
        out.append((x, y, x + bw, y + bh, score))
    return out


class ClassicalDetector:
    """The default OpenCV detector (see the module docstring).

    Args:
        config: ``config.dark_threshold`` is the near-black level of border and panels.
    """

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        self.config = config or PreprocessConfig()

    @property
    def fingerprint(self) -> str:
        """What the detector's output depends on (part of preprocessing cache keys)."""
        return f"{CLASSICAL}:dark_threshold={self.config.dark_threshold}"

    def __call__(self, image: np.ndarray) -> OverlayDetection:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        scale = min(1.0, _WORK_SIZE / max(h, w))
        sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
        small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else image
        dark, hull = _field_of_view(small, self.config.dark_threshold)
        fx, fy = w / sw, h / sh

        def up(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
            return (
                float(np.clip(round(x0 * fx), 0, w)),
                float(np.clip(round(y0 * fy), 0, h)),
                float(np.clip(round(x1 * fx), 0, w)),
                float(np.clip(round(y1 * fy), 0, h)),
            )

        boxes: list[OverlayBox] = []
        content = hull.copy()
        outside = cv2.bitwise_not(hull)
        for x0, y0, x1, y1, score in _panels(dark, hull):
            boxes.append(OverlayBox("box", up(x0, y0, x1, y1), score))
            content[y0:y1, x0:x1] = 0
            outside[y0:y1, x0:x1] = 0
        for x0, y0, x1, y1, kind in _border_boxes(outside, hull, min_area=0.002 * sh * sw):
            boxes.append(OverlayBox(kind, up(x0, y0, x1, y1), 1.0))
        for x0, y0, x1, y1, score in _tube(small, hull, content):
            boxes.append(OverlayBox("tube", up(x0, y0, x1, y1), score))
        content_full = (
            cv2.resize(content, (w, h), interpolation=cv2.INTER_NEAREST) if scale < 1 else content
        ) > 0
        text_boxes, text_mask = _text(image, content_full)
        for x0, y0, x1, y1, score in text_boxes:
            boxes.append(OverlayBox("text", (float(x0), float(y0), float(x1), float(y1)), score))
        return OverlayDetection(boxes=boxes, content=content_full, text=text_mask)


def default_detector(config: PreprocessConfig) -> OverlayDetector:
    """The detector the pipeline builds itself: the classical one.

    Raises ``ValueError`` when ``config.detector`` names another detector: that one is
    built by the caller (``endofed.shared.overlay_detector.overlay_detector_for``) and
    passed in as ``detector=``.
    """
    if config.detector != CLASSICAL:
        raise ValueError(
            f"PreprocessConfig.detector is {config.detector!r}: the preprocessing pipeline "
            f"only builds the {CLASSICAL!r} detector itself; build this one with "
            "endofed.shared.overlay_detector.overlay_detector_for(config) and pass it as "
            "detector=..."
        )
    return ClassicalDetector(config)
