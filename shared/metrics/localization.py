"""Localisation by morphology (paper table 6): counting into the state and the table.

For each ground-truth lesion, the best IoU with any detection of the same class whose
score is ``>= score_threshold``; a lesion is a hit at ``t`` if that IoU is ``>= t``.
Hits, totals and IoU sums are kept per morphology row (``loc_*_morph``, the last row
for unknown morphology ``-1`` or an index past ``morphology_names``) and per class
(``loc_*_class``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from endofed.shared.metrics.detection import box_iou
from endofed.shared.metrics.state import State

UNKNOWN_MORPHOLOGY = "unknown"


def count_class_localization(
    st: State,
    ci: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    gts: np.ndarray,
    morphology: np.ndarray,
    *,
    score_threshold: float,
    loc_thresholds: np.ndarray,
    num_morphologies: int,
) -> bool:
    """Add the ground-truth lesions ``gts`` of class index ``ci`` of one image to ``st``.

    ``boxes``/``scores`` are all that image's detections of the class. Returns whether
    a morphology index beyond the ``num_morphologies`` names was counted as unknown.
    """
    n_gt = int(gts.shape[0])
    confident = scores >= score_threshold
    loc_ious = box_iou(boxes[confident], gts)
    best = loc_ious.max(axis=0) if loc_ious.shape[0] else np.zeros(n_gt, np.float64)
    hits = best[:, None] >= loc_thresholds[None, :] - 1e-12  # (G, L)
    n_morph = num_morphologies
    rows = np.where((morphology >= 0) & (morphology < n_morph), morphology, n_morph)
    np.add.at(st["loc_hits_morph"], rows, hits.astype(np.int64))
    np.add.at(st["loc_total_morph"], rows, 1)
    np.add.at(st["loc_iou_sum_morph"], rows, best)
    st["loc_hits_class"][ci] += hits.sum(axis=0)
    st["loc_total_class"][ci] += n_gt
    st["loc_iou_sum_class"][ci] += float(best.sum())
    return bool(n_morph and np.any(morphology >= n_morph))


def _loc_row(
    loc_thresholds: np.ndarray, hits: np.ndarray, total: int, iou_sum: float
) -> dict[str, Any]:
    thr = [float(t) for t in loc_thresholds]
    return {
        "total": int(total),
        "hits": {t: int(h) for t, h in zip(thr, hits)},
        "share": {t: (float(h) / total if total else float("nan")) for t, h in zip(thr, hits)},
        "mean_iou": float(iou_sum) / total if total else float("nan"),
    }


def localization_table(
    st: State,
    *,
    class_names: Sequence[str],
    morphology_names: Sequence[str],
    loc_thresholds: np.ndarray,
    score_threshold: float,
) -> dict[str, Any]:
    """The localisation table: overall, per morphology (+ ``"unknown"``) and per class."""
    hits_m, total_m = st["loc_hits_morph"], st["loc_total_morph"]
    iou_m = st["loc_iou_sum_morph"]
    per_morph: dict[str, Any] = {}
    for i, name in enumerate(morphology_names):
        per_morph[name] = _loc_row(loc_thresholds, hits_m[i], int(total_m[i]), float(iou_m[i]))
    if int(total_m[-1]) > 0 and morphology_names:
        per_morph[UNKNOWN_MORPHOLOGY] = _loc_row(
            loc_thresholds, hits_m[-1], int(total_m[-1]), float(iou_m[-1])
        )
    per_class = {
        name: _loc_row(
            loc_thresholds,
            st["loc_hits_class"][i],
            int(st["loc_total_class"][i]),
            float(st["loc_iou_sum_class"][i]),
        )
        for i, name in enumerate(class_names)
    }
    overall = _loc_row(loc_thresholds, hits_m.sum(axis=0), int(total_m.sum()), float(iou_m.sum()))
    return {
        "thresholds": [float(t) for t in loc_thresholds],
        "score_threshold": score_threshold,
        "overall": overall,
        "per_morphology": per_morph,
        "per_class": per_class,
    }
