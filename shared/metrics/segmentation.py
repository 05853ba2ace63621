"""Per-image pixel counts for mask Dice / IoU."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _as_bhw(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name}: expected (B, 1, H, W) or (B, H, W), got {x.shape}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected (B, 1, H, W) or (B, H, W), got {x.shape}")
    return x


def mask_counts(
    mask_prob: np.ndarray, mask_true: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image pixel TP, FP, FN (each ``(B,)`` int64) of ``mask_prob >= threshold``.

    ``mask_true`` is positive where ``> 0.5``. A prediction at a different resolution
    is resized bilinearly to the ground-truth size first.
    """
    prob = _as_bhw(np.asarray(mask_prob, dtype=np.float32), "mask_prob")
    true = _as_bhw(np.asarray(mask_true, dtype=np.float32), "mask_true")
    if prob.shape[0] != true.shape[0]:
        raise ValueError(f"mask_prob has {prob.shape[0]} images but mask_true has {true.shape[0]}")
    if prob.shape[1:] != true.shape[1:] and prob.shape[0] > 0:
        prob = F.interpolate(
            torch.from_numpy(prob)[:, None],
            size=true.shape[1:],
            mode="bilinear",
            align_corners=False,
        )[:, 0].numpy()
    pred = prob >= threshold
    gt = true > 0.5
    tp = np.logical_and(pred, gt).sum(axis=(1, 2)).astype(np.int64)
    fp = np.logical_and(pred, ~gt).sum(axis=(1, 2)).astype(np.int64)
    fn = np.logical_and(~pred, gt).sum(axis=(1, 2)).astype(np.int64)
    return tp, fp, fn


def dice_iou(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, empty_value: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU; ``empty_value`` where prediction and truth are both empty."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    fn = np.asarray(fn, dtype=np.float64)
    union = tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(union > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), empty_value)
        iou = np.where(union > 0, tp / np.maximum(union, 1), empty_value)
    return dice, iou
