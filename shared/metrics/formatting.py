"""How metric values read in reports: numbers, percentages, localisation rows.

Shared by the Markdown report (:mod:`.report`) and the figures (:mod:`.plots`):
missing or non-finite values read ``n/a``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def fmt_value(value: Any, digits: int = 4) -> str:
    """Ints as ints, numbers with ``digits`` decimals, ``None``/nan/inf as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return "n/a"
    return f"{f:.{digits}f}"


def fmt_percent(value: Any) -> str:
    """A share as a percentage with two decimals (``n/a`` if not a finite number)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{100 * f:.2f}%" if math.isfinite(f) else "n/a"


def localization_groups(loc: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The localisation rows in report order: each morphology, then ``"total"``."""
    groups = list((loc.get("per_morphology") or {}).items())
    if loc.get("overall"):
        groups.append(("total", loc["overall"]))
    return groups


def share_at(row: Mapping[str, Any], t: float) -> float:
    """A row's share of lesions localised at IoU threshold ``t`` (0.0 if absent/nan)."""
    shares = row.get("share") or {}
    for key, value in shares.items():
        if math.isclose(float(key), t):
            return float(value) if value is not None and math.isfinite(float(value)) else 0.0
    return 0.0


def hits_at(row: Mapping[str, Any], t: float) -> int:
    """A row's number of lesions localised at IoU threshold ``t`` (0 if absent)."""
    for key, value in (row.get("hits") or {}).items():
        if math.isclose(float(key), t):
            return int(value)
    return 0


#: Words for the metric keys of ``metrics.csv`` / :func:`flat_scalars` in titles,
#: axis labels and table headers.
METRIC_LABELS: dict[str, str] = {
    "map50": "mAP@0.5",
    "map": "mAP@[.5:.95]",
    "accuracy": "Accuracy",
    "f1": "F1 (macro)",
    "f1_lesion": "F1 (lesion vs normal)",
    "sensitivity": "Sensitivity (argmax)",
    "specificity": "Specificity (argmax)",
    "auc": "AUC (one-vs-rest)",
    "auc_lesion": "AUC (lesion vs normal)",
    "dice": "Dice, all images",
    "iou": "IoU, all images",
    "dice_lesion": "Dice, lesion images",
    "iou_lesion": "IoU, lesion images",
    "dice_lesion_free": "Dice, lesion-free images",
    "dice_pooled": "Dice (pooled pixels)",
    "iou_pooled": "IoU (pooled pixels)",
    "op_threshold": "Lesion threshold",
    "op_sensitivity": "Sensitivity at the threshold",
    "op_specificity": "Specificity at the threshold",
    "loc_iou": "Mean best IoU of lesions",
    "latency_ms": "Latency per image (ms)",
    "train-loss": "Training loss",
    "train-seconds": "Training time (s)",
    "round-seconds": "Round time (s)",
    "epsilon-spent": "ε spent",
    "epsilon-target": "ε target",
    "num-examples": "Training images",
    "num_images": "Validation images",
    "sites-aggregated": "Sites aggregated",
}

#: Metrics bounded by [0, 1] (rates, AP, AUC, Dice, IoU): plotted on a fixed 0-1 axis.
UNIT_INTERVAL_METRICS: frozenset[str] = frozenset({
    "map50", "map", "accuracy", "f1", "f1_lesion", "precision_lesion", "sensitivity",
    "specificity", "auc", "auc_lesion", "dice", "iou", "dice_lesion", "iou_lesion",
    "dice_lesion_free", "iou_lesion_free", "dice_pooled", "iou_pooled", "op_threshold",
    "op_sensitivity", "op_specificity", "loc_iou",
})

#: Columns that count things (images, sites, rounds): written as integers.
COUNT_METRICS: frozenset[str] = frozenset({
    "round", "num-examples", "num_images", "sites-aggregated", "train-images", "loc_total",
    "seg_images", "seg_lesion_images", "dp-steps", "declined", "rejected", "unavailable",
    "missing",
})


def metric_label(key: str) -> str:
    """The words for a metric key (``map50`` -> ``mAP@0.5``); prefixed per-class keys
    (``ap50/polyp``) read ``AP@0.5 (polyp)``; unknown keys are returned as they are."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    prefix, _, rest = key.partition("/")
    per_class = {"ap50": "AP@0.5", "ap": "AP@[.5:.95]", "auc": "AUC", "recall": "Recall",
                 "f1": "F1"}
    if rest and prefix in per_class:
        return f"{per_class[prefix]} ({rest})"
    if key.startswith("loc@"):
        t, _, morph = key[4:].partition("/")
        return f"Lesions localised at IoU ≥ {t}" + (f" ({morph})" if morph else "")
    return key


def fmt_count(value: Any) -> str:
    """A count as an integer (``26.0`` -> ``26``); ``n/a`` when missing or not finite."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "n/a" if value is None else str(value)
    if not math.isfinite(f):
        return "n/a"
    return str(int(round(f)))


def fmt_cell(key: str, value: Any, digits: int = 4) -> str:
    """A table cell of metric ``key``: counts as integers, the rest by :func:`fmt_value`."""
    return fmt_count(value) if key in COUNT_METRICS else fmt_value(value, digits)
