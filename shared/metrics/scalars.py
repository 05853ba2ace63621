"""Scalar summaries: nan-aware mean, flat ``{name: float}``, model-selection comparison.

:func:`flat_scalars` turns :meth:`MetricAccumulator.compute` output into the flat
rows written to CSV files and Flower ``MetricRecord``\\ s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def nan_mean(values: Iterable[float]) -> float:
    """Mean of the non-``nan`` values; ``nan`` if there are none."""
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def improves(new: float, best: float | None) -> bool:
    """Model selection: does a validation score ``new`` replace the ``best`` so far?

    Strictly higher wins (a tie keeps the earlier model); ``nan`` (e.g. mAP without
    ground-truth boxes) never beats a finite value, and while nothing is finite the
    newer model is kept. ``best=None``: nothing kept yet.
    """
    if best is None or math.isnan(best):
        return True
    return not math.isnan(new) and new > best


def _fmt_thr(t: float) -> str:
    return f"{float(t):g}"


def flat_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flatten :meth:`MetricAccumulator.compute` output into ``{name: float}``.

    Keys: headline scalars (``map50``, ``map``, ``accuracy``, ``f1``, ``sensitivity``,
    ``specificity``, ``auc``, ``dice``, ``iou``, ``latency_ms``, ``num_images``, ...),
    ``ap50/<class>``, ``ap/<class>``, ``auc/<class>``, ``recall/<class>``,
    ``loc@<t>``, ``loc@<t>/<morphology>``, ``loc_iou`` and, when the metrics carry an
    ``operating_point``, ``op_threshold`` / ``op_sensitivity`` / ``op_specificity``.
    Fit for CSV rows and Flower ``MetricRecord``\\ s (which accept ``nan``).
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, np.bool_)):
            continue
        if isinstance(value, (int, float, np.integer, np.floating)):
            out[key] = float(value)
    for prefix, key in (
        ("ap50", "ap_per_class"),
        ("ap", "ap_coco_per_class"),
        ("auc", "auc_per_class"),
        ("recall", "recall_per_class"),
        ("f1", "f1_per_class"),
    ):
        for name, value in (metrics.get(key) or {}).items():
            out[f"{prefix}/{name}"] = float(value)
    op = metrics.get("operating_point")
    if isinstance(op, Mapping):  # the calibrated image-level threshold, if one was chosen
        for name in ("threshold", "sensitivity", "specificity"):
            if op.get(name) is not None:
                out[f"op_{name}"] = float(op[name])
    loc = metrics.get("localization") or {}
    overall = loc.get("overall")
    if overall:
        for t, share in overall["share"].items():
            out[f"loc@{_fmt_thr(t)}"] = float(share)
        out["loc_iou"] = float(overall["mean_iou"])
        out["loc_total"] = float(overall["total"])
    for morph, row in (loc.get("per_morphology") or {}).items():
        for t, share in row["share"].items():
            out[f"loc@{_fmt_thr(t)}/{morph}"] = float(share)
    return out
