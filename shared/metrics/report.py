"""Evaluation reports: ``metrics.json``, ``report.md`` and its PNG figures.

The figures are drawn by :mod:`.plots` (re-exported here, with the run plots used by
the server's run report); tables are :func:`endofed.shared.util.tables.markdown_table`
(re-exported here).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from endofed.shared.metrics.formatting import (
    fmt_count,
    fmt_percent,
    fmt_value,
    hits_at,
    localization_groups,
    share_at,
)
from endofed.shared.metrics.plots import (
    plot_confusion_matrix,
    plot_localization,
    plot_metric_curves,
    plot_roc,
    plot_site_bars,
)
from endofed.shared.util.atomic import atomic_write_text
from endofed.shared.util.tables import markdown_table

__all__ = [
    "HEADLINE_METRICS",
    "json_safe",
    "markdown_table",
    "plot_confusion_matrix",
    "plot_localization",
    "plot_metric_curves",
    "plot_roc",
    "plot_site_bars",
    "write_evaluation_report",
]

logger = logging.getLogger(__name__)

HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("map50", "mAP@0.5"),
    ("map", "mAP@[.5:.95]"),
    ("accuracy", "Accuracy (argmax class)"),
    ("f1", "F1 (macro, lesion classes; argmax)"),
    ("f1_lesion", "F1 (lesion vs normal; argmax)"),
    ("sensitivity", "Sensitivity (lesion vs normal), argmax verdict (threshold 0.5)"),
    ("specificity", "Specificity (lesion vs normal), argmax verdict (threshold 0.5)"),
    ("auc", "AUC (one-vs-rest)"),
    ("auc_lesion", "AUC (lesion vs normal)"),
    ("dice_lesion", "Dice, lesion images (mean per image with a lesion mask)"),
    ("latency_ms", "Latency per image (ms)"),
    ("num_images", "Images"),
)


# --------------------------------------------------------------------- json
def json_safe(obj: Any) -> Any:
    """Recursively convert to JSON-safe Python: str keys, lists, ``None`` for nan/inf."""
    if isinstance(obj, Mapping):
        return {_key(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _key(k: Any) -> str:
    if isinstance(k, (float, np.floating)):
        return f"{float(k):g}"
    return str(k)


# ------------------------------------------------------------------ markdown
def _headline_table(metrics: Mapping[str, Any]) -> str:
    rows = [
        (label, fmt_count(metrics[key]) if key == "num_images"
         else fmt_value(metrics[key], 2 if key == "latency_ms" else 4))
        for key, label in HEADLINE_METRICS
        if key in metrics
    ]
    op = metrics.get("operating_point")
    if isinstance(op, Mapping) and op.get("threshold") is not None:
        # The verdict the model ships with leads; the argmax rows stay for comparison.
        at = f"at the lesion threshold {fmt_value(op['threshold'], 4)} (rule `{op.get('rule')}`)"
        first = next((i for i, (label, _) in enumerate(rows)
                      if label.startswith("Sensitivity")), len(rows))
        rows[first:first] = [(f"Sensitivity (lesion vs normal) {at}",
                              fmt_value(op.get("sensitivity"), 4)),
                             (f"Specificity (lesion vs normal) {at}",
                              fmt_value(op.get("specificity"), 4))]
    return markdown_table(["Metric", "Value"], rows)


def _segmentation_section(metrics: Mapping[str, Any]) -> list[str]:
    """Dice / IoU per group of images, with what each mean is a mean of."""
    if not any(k in metrics for k in ("dice", "dice_lesion", "dice_pooled")):
        return []
    n_all = metrics.get("seg_images")
    n_lesion = metrics.get("seg_lesion_images")
    n_free = (int(n_all) - int(n_lesion)) if n_all is not None and n_lesion is not None \
        else None
    rows = [
        ("Lesion images (lesion mask not empty)", fmt_count(n_lesion),
         fmt_value(metrics.get("dice_lesion")), fmt_value(metrics.get("iou_lesion"))),
        ("Lesion-free images (empty mask)", fmt_count(n_free),
         fmt_value(metrics.get("dice_lesion_free")), fmt_value(metrics.get("iou_lesion_free"))),
        ("All images (mean of the two groups, weighted by their counts)", fmt_count(n_all),
         fmt_value(metrics.get("dice")), fmt_value(metrics.get("iou"))),
        ("All pixels pooled", "", fmt_value(metrics.get("dice_pooled")),
         fmt_value(metrics.get("iou_pooled"))),
    ]
    return [
        "## Segmentation (Dice, IoU of the predicted lesion mask)",
        "Per image, Dice = 2 |predicted ∩ true| / (|predicted| + |true|) of the mask "
        "thresholded at 0.5. On a lesion-free image it is 1 when nothing is predicted and "
        "0 otherwise, so the lesion-free row is the share of lesion-free images without a "
        "false mask, and the all-images mean mixes that share with the lesion images' "
        "Dice: read the lesion row for how well lesions are outlined.",
        markdown_table(["Images", "Count", "Dice (mean)", "IoU (mean)"], rows),
    ]


def _per_class_table(metrics: Mapping[str, Any]) -> str:
    names = list(metrics.get("class_names") or [])
    ap50 = metrics.get("ap_per_class") or {}
    ap = metrics.get("ap_coco_per_class") or {}
    num_gt = metrics.get("num_gt_per_class") or {}
    auc = metrics.get("auc_per_class") or {}
    recall = metrics.get("recall_per_class") or {}
    f1 = metrics.get("f1_per_class") or {}
    rows = []
    for name in names or list(ap50):
        rows.append(
            (
                name,
                fmt_value(num_gt.get(name), 0) if name in num_gt else "-",
                fmt_value(ap50.get(name)) if name in ap50 else "-",
                fmt_value(ap.get(name)) if name in ap else "-",
                fmt_value(auc.get(name)),
                fmt_value(recall.get(name)),
                fmt_value(f1.get(name)),
            )
        )
    return markdown_table(
        ["Class", "GT boxes", "AP@0.5", "AP@[.5:.95]", "AUC (OvR)", "Recall (image)", "F1 (image)"],
        rows,
    )


def _confusion_table(metrics: Mapping[str, Any]) -> str:
    cm = metrics.get("confusion_matrix") or []
    names = list(metrics.get("class_names") or [str(i) for i in range(len(cm))])
    rows = [[f"**{names[i]}**", *[str(int(v)) for v in row]] for i, row in enumerate(cm)]
    return markdown_table(["True \\ Predicted", *names], rows)


def _localization_table(metrics: Mapping[str, Any]) -> str:
    loc = metrics.get("localization") or {}
    thresholds = [float(t) for t in loc.get("thresholds") or []]
    headers = ["Morphology", "Lesions"]
    for t in thresholds:
        headers += [f"IoU >= {t:g}", "Share"]
    headers.append("Mean best IoU")
    rows = []
    for name, row in localization_groups(loc):
        cells: list[Any] = [name if name != "total" else "**Total**", int(row.get("total", 0))]
        for t in thresholds:
            cells += [hits_at(row, t), fmt_percent(_share_or_nan(row, t))]
        cells.append(fmt_value(row.get("mean_iou"), 3))
        rows.append(cells)
    return markdown_table(headers, rows)


def _operating_point_section(metrics: Mapping[str, Any]) -> list[str]:
    """The lesion / no-lesion verdict's threshold, its rule and its rates (if known)."""
    op = metrics.get("operating_point")
    if not isinstance(op, Mapping) or op.get("threshold") is None:
        return []
    rows = [
        ("Rule", f"`{op.get('rule', 'n/a')}`"),
        ("Threshold (lesion probability = 1 - p(normal))", fmt_value(op["threshold"], 4)),
        ("Sensitivity at the threshold", fmt_value(op.get("sensitivity"))),
        ("Specificity at the threshold", fmt_value(op.get("specificity"))),
        ("Lesion / normal images", f"{fmt_value(op.get('num_positive'), 0)} / "
                                   f"{fmt_value(op.get('num_negative'), 0)}"),
    ]
    if op.get("chosen_on"):
        rows.append(("Chosen on", str(op["chosen_on"])))
    if op.get("note"):
        rows.append(("Note", str(op["note"])))
    return [
        "## Image-level operating point",
        "An image is called a lesion image when its lesion probability is above the "
        "threshold. The headline table gives sensitivity / specificity at this threshold "
        "and, for comparison, at the argmax verdict (threshold 0.5).",
        markdown_table(["", "Value"], rows),
    ]


def _share_or_nan(row: Mapping[str, Any], t: float) -> float:
    return share_at(row, t) if int(row.get("total", 0)) > 0 else float("nan")


def write_evaluation_report(
    metrics: Mapping[str, Any],
    out_dir: Path,
    *,
    title: str,
    extra_sections: Mapping[str, str] | None = None,
    preamble_sections: Sequence[str] = (),
) -> Path:
    """Write ``metrics.json``, ``report.md`` and ``roc.png`` / ``confusion_matrix.png`` /
    ``localization.png`` into ``out_dir``; returns the path of ``report.md``.

    ``metrics`` is the output of :meth:`MetricAccumulator.compute`; missing parts are
    rendered as "n/a" / "no data". ``extra_sections`` maps a heading to Markdown text
    appended at the end (e.g. per-site tables or privacy budgets); ``preamble_sections``
    are Markdown blocks put right under the title (e.g. the run's settings). Every file
    is replaced atomically, so a reader sees the previous report or the new one.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n"
    )
    plot_roc(metrics, out_dir / "roc.png")
    plot_confusion_matrix(metrics, out_dir / "confusion_matrix.png")
    plot_localization(metrics, out_dir / "localization.png")

    loc = metrics.get("localization") or {}
    parts = [
        f"# {title}",
        *(preamble_sections or ()),
        "## Headline metrics",
        _headline_table(metrics),
        *_operating_point_section(metrics),
        *_segmentation_section(metrics),
        "## Per class",
        _per_class_table(metrics),
        "## Confusion matrix (image level)",
        "Rows are the true class, columns the predicted class (argmax of the image probabilities).",
        _confusion_table(metrics),
        "![Confusion matrix](confusion_matrix.png)",
        "## ROC curves",
        "![ROC](roc.png)",
        "## Localisation (share of lesions by best IoU)",
        "Best IoU of each ground-truth lesion with a same-class detection of score >= "
        f"{fmt_value(loc.get('score_threshold'), 2)}.",
        _localization_table(metrics),
        "![Localisation](localization.png)",
    ]
    for heading, body in (extra_sections or {}).items():
        parts += [f"## {heading}", body.rstrip()]
    report = atomic_write_text(out_dir / "report.md", "\n\n".join(parts) + "\n")
    logger.info("Evaluation report written to %s", report)
    return report
