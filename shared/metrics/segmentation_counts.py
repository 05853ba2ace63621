"""Segmentation from the state: per-image Dice / IoU sums and pooled pixel counts.

Per image, Dice / IoU of ``mask_prob >= threshold`` (1.0 when truth and prediction
are both empty) are summed over all images (``seg_*_sum``) and over images with a
non-empty truth (``seg_pos_*``); pixel TP / FP / FN are pooled (``seg_tp`` ...).
"""

from __future__ import annotations

from typing import Any

from endofed.shared.metrics.segmentation import dice_iou, mask_counts
from endofed.shared.metrics.state import State, to_numpy


def count_masks(st: State, mask_prob: Any, mask_true: Any, threshold: float) -> int:
    """Add a batch of predicted / true masks to ``st``; returns the batch size."""
    tp, fp, fn = mask_counts(to_numpy(mask_prob), to_numpy(mask_true), threshold)
    dice, iou = dice_iou(tp, fp, fn, empty_value=1.0)
    pos = (tp + fn) > 0
    st["seg_images"] += tp.shape[0]
    st["seg_dice_sum"] += float(dice.sum())
    st["seg_iou_sum"] += float(iou.sum())
    st["seg_pos_images"] += int(pos.sum())
    st["seg_pos_dice_sum"] += float(dice[pos].sum())
    st["seg_pos_iou_sum"] += float(iou[pos].sum())
    st["seg_tp"] += int(tp.sum())
    st["seg_fp"] += int(fp.sum())
    st["seg_fn"] += int(fn.sum())
    return int(tp.shape[0])


def segmentation_metrics(st: State) -> dict[str, float]:
    """``dice``, ``iou`` (all images), ``*_lesion`` (non-empty truth), ``*_lesion_free``
    (empty truth: the share with an empty prediction), ``*_pooled``, and the image counts
    ``seg_images`` / ``seg_lesion_images`` behind the means."""
    nan = float("nan")
    n_seg = int(st["seg_images"])
    n_pos = int(st["seg_pos_images"])
    tp, fp, fn = (int(st[k]) for k in ("seg_tp", "seg_fp", "seg_fn"))
    return {
        "dice": float(st["seg_dice_sum"]) / n_seg if n_seg else nan,
        "iou": float(st["seg_iou_sum"]) / n_seg if n_seg else nan,
        "dice_lesion": float(st["seg_pos_dice_sum"]) / n_pos if n_pos else nan,
        "iou_lesion": float(st["seg_pos_iou_sum"]) / n_pos if n_pos else nan,
        # a difference of two float sums: clipped so rounding never reads -0.0000
        "dice_lesion_free": min(1.0, max(0.0, (float(st["seg_dice_sum"])
                                               - float(st["seg_pos_dice_sum"]))
                                         / (n_seg - n_pos))) if n_seg > n_pos else nan,
        "iou_lesion_free": min(1.0, max(0.0, (float(st["seg_iou_sum"])
                                              - float(st["seg_pos_iou_sum"]))
                                        / (n_seg - n_pos))) if n_seg > n_pos else nan,
        "seg_images": n_seg,
        "seg_lesion_images": n_pos,
        "dice_pooled": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else nan,
        "iou_pooled": tp / (tp + fp + fn) if (tp + fp + fn) else nan,
    }
