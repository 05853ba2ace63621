"""Detection AP from the state: TP/FP score histograms per class and IoU threshold.

Per image and class, detections are sorted by descending score (stable), capped at
``max_detections``, greedily matched to the ground truth (:func:`greedy_match`) and
counted as true / false positive in the bin of their score (``det_tp`` / ``det_fp``,
shape ``(K, T, bins)``); ``det_num_gt`` counts the ground-truth boxes. Reading the
state back gives COCO's 101-point AP per class (see :mod:`.detection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from endofed.shared.metrics.detection import (
    average_precision_from_histograms,
    box_iou,
    greedy_match,
    score_bins,
)
from endofed.shared.metrics.scalars import nan_mean
from endofed.shared.metrics.state import State


def count_class_detections(
    st: State,
    ci: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    gts: np.ndarray,
    *,
    iou_thresholds: np.ndarray,
    num_bins: int,
    max_detections: int,
) -> None:
    """Add one image's detections of class index ``ci`` (label ``ci + 1``) to ``st``."""
    st["det_num_gt"][ci] += int(gts.shape[0])
    order = np.argsort(-scores, kind="mergesort")[:max_detections]
    boxes, scores = boxes[order], scores[order]
    if boxes.shape[0]:
        tp = greedy_match(box_iou(boxes, gts), iou_thresholds)  # (T, D)
        bins = score_bins(scores, num_bins)
        for ti in range(iou_thresholds.size):
            st["det_tp"][ci, ti] += np.bincount(bins[tp[ti]], minlength=num_bins)
            st["det_fp"][ci, ti] += np.bincount(bins[~tp[ti]], minlength=num_bins)


def detection_metrics(
    st: State, class_names: Sequence[str], iou_thresholds: np.ndarray
) -> dict[str, Any]:
    """``map50``, ``map`` and the per-class AP / ground-truth counts of a state."""
    k, thr = len(class_names), iou_thresholds
    ap = np.full((k, thr.size), np.nan)
    for ci in range(k):
        for ti in range(thr.size):
            ap[ci, ti] = average_precision_from_histograms(
                st["det_tp"][ci, ti], st["det_fp"][ci, ti], st["det_num_gt"][ci]
            )
    i50 = np.flatnonzero(np.isclose(thr, 0.5))
    ap50 = ap[:, i50[0]] if i50.size else np.full(k, np.nan)
    ap_coco = np.array([nan_mean(row) for row in ap]) if ap.size else ap
    return {
        "map50": nan_mean(ap50.tolist()),
        "map": nan_mean(ap_coco.tolist()),
        "ap_per_class": dict(zip(class_names, map(float, ap50))),
        "ap_coco_per_class": dict(zip(class_names, map(float, ap_coco))),
        "num_gt_per_class": dict(zip(class_names, map(int, st["det_num_gt"].tolist()))),
    }
