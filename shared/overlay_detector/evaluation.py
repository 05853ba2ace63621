"""Per-type recall and precision of an overlay detector on composites."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from endofed.shared.data.synthetic import OVERLAY_TYPES, Composite
from endofed.shared.preprocessing import OverlayBox, OverlayDetection

#: ``image -> OverlayDetection`` (a detector) or ``image -> [OverlayBox]`` (its boxes).
BoxSource = Callable[[np.ndarray], OverlayDetection | Sequence[OverlayBox]]


def overlay_recall(
    detector: BoxSource,
    composites: Sequence[Composite],
    *,
    iou_thresh: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Recall per overlay type at IoU >= ``iou_thresh`` (a same-type detection must
    overlap the ground-truth box), and the share of detections that match a
    ground-truth box of their type (``precision``). ``detector`` maps an image to
    :class:`OverlayDetection` or a list of :class:`OverlayBox`."""
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
