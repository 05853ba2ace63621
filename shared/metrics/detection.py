"""Detection matching and average precision from additive score histograms.

Matching follows COCO (``pycocotools.cocoeval.COCOeval.evaluateImg``): per image and
class, detections are visited by descending score (stable sort) and each one is
matched to the *unmatched* ground-truth box with the highest IoU, provided that IoU is
``>= t``; a ground-truth box is matched at most once. Instead of keeping every
detection score, a true / false positive is counted in the histogram bin of its score,
so per-site results can be summed and the AP recomputed exactly up to the bin width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.ops import box_iou as _tv_box_iou

#: COCO's 101 recall points used for interpolated AP.
COCO_RECALL_POINTS: np.ndarray = np.linspace(0.0, 1.0, 101)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(N, M)`` of XYXY boxes (``torchvision.ops.box_iou`` in float64)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    return _tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def score_bins(scores: np.ndarray, num_bins: int) -> np.ndarray:
    """Histogram bin of each score in ``[0, 1]`` (clipped; 1.0 falls in the last bin)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    idx = np.floor(np.clip(s, 0.0, 1.0) * num_bins).astype(np.int64)
    return np.minimum(idx, num_bins - 1)


def greedy_match(ious: np.ndarray, iou_thresholds: Sequence[float]) -> np.ndarray:
    """COCO greedy matching of score-sorted detections to ground truth.

    Args:
        ious: ``(D, G)`` IoU matrix, rows already sorted by descending detection score.
        iou_thresholds: ``T`` thresholds.

    Returns:
        ``(T, D)`` boolean array, ``True`` where the detection is a true positive.
    """
    ious = np.asarray(ious, dtype=np.float64)
    num_det, num_gt = ious.shape
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    tp = np.zeros((thresholds.shape[0], num_det), dtype=bool)
    if num_det == 0 or num_gt == 0:
        return tp
    row_max = ious.max(axis=1)
    for ti, thr in enumerate(thresholds):
        thr = min(float(thr), 1.0 - 1e-10)  # as COCOeval
        taken = np.zeros(num_gt, dtype=bool)
        for d in range(num_det):
            if row_max[d] < thr:
                continue
            candidates = np.where(taken, -1.0, ious[d])
            g = int(np.argmax(candidates))
            if candidates[g] >= thr:
                taken[g] = True
                tp[ti, d] = True
                if taken.all():
                    break
    return tp


def average_precision_from_histograms(
    tp_hist: np.ndarray, fp_hist: np.ndarray, num_gt: int | np.integer
) -> float:
    """COCO 101-point interpolated AP from TP/FP counts per score bin.

    Args:
        tp_hist, fp_hist: ``(bins,)`` counts, bin ``i`` covering scores
            ``[i / bins, (i + 1) / bins)``.
        num_gt: number of ground-truth boxes of the class.

    Returns:
        AP in ``[0, 1]``; ``nan`` when there is no ground truth (COCO's ``-1``).
    """
    if int(num_gt) <= 0:
        return float("nan")
    tp = np.asarray(tp_hist, dtype=np.float64)[::-1]
    fp = np.asarray(fp_hist, dtype=np.float64)[::-1]
    keep = (tp + fp) > 0
    if not keep.any():
        return 0.0
    tp_cum = np.cumsum(tp[keep])
    fp_cum = np.cumsum(fp[keep])
    recall = tp_cum / float(num_gt)
    precision = tp_cum / (tp_cum + fp_cum)
    # Precision envelope: make it non-increasing from right to left.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    valid = idx < recall.shape[0]
    q = np.zeros_like(COCO_RECALL_POINTS)
    q[valid] = precision[idx[valid]]
    return float(q.mean())


def precision_recall_from_histograms(
    tp_hist: np.ndarray, fp_hist: np.ndarray, num_gt: int | np.integer
) -> tuple[np.ndarray, np.ndarray]:
    """Raw precision / recall points by descending score bin (for PR plots)."""
    tp = np.asarray(tp_hist, dtype=np.float64)[::-1]
    fp = np.asarray(fp_hist, dtype=np.float64)[::-1]
    keep = (tp + fp) > 0
    if not keep.any() or int(num_gt) <= 0:
        return np.zeros(0), np.zeros(0)
    tp_cum = np.cumsum(tp[keep])
    fp_cum = np.cumsum(fp[keep])
    return tp_cum / (tp_cum + fp_cum), tp_cum / float(num_gt)
