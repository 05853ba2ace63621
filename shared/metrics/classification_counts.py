"""Image-level classification from the state: confusion matrix and score histograms.

``cls_confusion`` counts (true class, ``argmax`` class) pairs; ``cls_pos_hist`` /
``cls_neg_hist`` hold, per image class, the histogram of that class' probability over
the images that are / are not of the class. Read back they give accuracy, F1,
sensitivity / specificity and (histogram-exact) one-vs-rest AUC and ROC curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from endofed.shared.metrics.classification import (
    NORMAL_NAME,
    auc_from_histograms,
    binary_lesion_metrics,
    per_class_from_confusion,
    roc_from_histograms,
)
from endofed.shared.metrics.detection import score_bins
from endofed.shared.metrics.scalars import nan_mean
from endofed.shared.metrics.state import State


def count_image_classes(st: State, probs: np.ndarray, labels: np.ndarray, num_bins: int) -> int:
    """Add validated ``(B, K + 1)`` probabilities and ``(B,)`` labels; returns ``B``."""
    if labels.size == 0:
        return 0
    pred = np.argmax(np.nan_to_num(probs, nan=-np.inf), axis=1)
    np.add.at(st["cls_confusion"], (labels, pred), 1)
    bins = score_bins(probs, num_bins)  # (B, K+1)
    for c in range(probs.shape[1]):
        pos = labels == c
        st["cls_pos_hist"][c] += np.bincount(bins[pos, c], minlength=num_bins)
        st["cls_neg_hist"][c] += np.bincount(bins[~pos, c], minlength=num_bins)
    st["cls_images"] += labels.shape[0]
    return int(labels.shape[0])


def classification_metrics(st: State, image_class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, F1, binary lesion metrics, confusion matrix, AUC and ROC of a state."""
    nan = float("nan")
    out: dict[str, Any] = {}
    cm = st["cls_confusion"]
    total = int(cm.sum())
    per = per_class_from_confusion(cm)
    lesion_f1 = [float(v) for v in per["f1"][1:]]
    binary = (
        binary_lesion_metrics(cm)
        if total
        else dict.fromkeys(("sensitivity", "specificity", "precision", "f1"), nan)
    )
    names = list(image_class_names)
    out["accuracy"] = float(np.trace(cm)) / total if total else nan
    out["f1"] = nan_mean(lesion_f1)
    out["f1_lesion"] = binary["f1"]
    out["precision_lesion"] = binary["precision"]
    out["sensitivity"] = binary["sensitivity"]
    out["specificity"] = binary["specificity"]
    out["f1_per_class"] = dict(zip(names, map(float, per["f1"])))
    out["precision_per_class"] = dict(zip(names, map(float, per["precision"])))
    out["recall_per_class"] = dict(zip(names, map(float, per["recall"])))
    out["confusion_matrix"] = cm.astype(int).tolist()
    out["class_names"] = list(names)

    auc_per_class: dict[str, float] = {}
    roc: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        a = auc_from_histograms(st["cls_pos_hist"][c], st["cls_neg_hist"][c])
        auc_per_class[name] = a
        fpr, tpr = roc_from_histograms(st["cls_pos_hist"][c], st["cls_neg_hist"][c])
        if fpr.size:
            roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": a}
    out["auc_per_class"] = auc_per_class
    out["auc_lesion"] = auc_per_class[NORMAL_NAME]  # AUC(normal, p0) == AUC(lesion, -p0)
    if len(names) == 2:  # one lesion class
        out["auc"] = auc_per_class[names[1]]
    else:
        out["auc"] = nan_mean(auc_per_class.values())
    out["roc"] = roc
    return out
