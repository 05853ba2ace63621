"""Image-level metrics from a confusion matrix and per-class score histograms.

Conventions: image classes are ``0..K`` with ``0 = normal``; the confusion matrix has
rows = true class and columns = predicted class (``sklearn.metrics.confusion_matrix``).
"""

from __future__ import annotations

import numpy as np

#: Name of image class ``0`` (no lesion).
NORMAL_NAME = "normal"


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def roc_from_histograms(
    pos_hist: np.ndarray, neg_hist: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr)`` sweeping the threshold down the score bins.

    The curve starts at ``(0, 0)`` and ends at ``(1, 1)``; only points where a count
    changes are kept. Empty arrays when there are no positives or no negatives.
    """
    pos = np.asarray(pos_hist, dtype=np.float64)[::-1]
    neg = np.asarray(neg_hist, dtype=np.float64)[::-1]
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return np.zeros(0), np.zeros(0)
    keep = (pos + neg) > 0
    tpr = np.concatenate([[0.0], np.cumsum(pos[keep]) / n_pos])
    fpr = np.concatenate([[0.0], np.cumsum(neg[keep]) / n_neg])
    return fpr, tpr


def auc_from_histograms(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """Area under the ROC curve (trapezoid) from positive/negative score histograms.

    Scores in the same bin count as ties (half credit), as ``roc_auc_score`` does for
    equal scores, so the value is exact up to the bin width. ``nan`` when either class
    is absent.
    """
    fpr, tpr = roc_from_histograms(pos_hist, neg_hist)
    if fpr.size == 0:
        return float("nan")
    return float(np.trapezoid(tpr, fpr))


def per_class_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest precision, recall and F1 per class (``nan`` where undefined)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    pred = cm.sum(axis=0)
    true = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred > 0, tp / np.maximum(pred, 1), np.nan)
        recall = np.where(true > 0, tp / np.maximum(true, 1), np.nan)
        denom = pred + true
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
    return {"precision": precision, "recall": recall, "f1": f1, "support": true}


def binary_lesion_metrics(cm: np.ndarray) -> dict[str, float]:
    """Lesion (any class ``>= 1``) versus normal (class ``0``) from the full matrix.

    * ``sensitivity``: share of lesion images predicted as *any* lesion class.
    * ``specificity``: share of normal images predicted normal.
    * ``precision`` / ``f1``: of the binary lesion-positive decision.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tn = cm[0, 0]
    fp = cm[0, 1:].sum()
    fn = cm[1:, 0].sum()
    tp = cm[1:, 1:].sum()
    sensitivity = _safe_div(tp, tp + fn)
    specificity = _safe_div(tn, tn + fp)
    precision = _safe_div(tp, tp + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": precision,
        "f1": f1,
    }
