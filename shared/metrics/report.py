"""Evaluation reports: ``metrics.json``, ``report.md`` and PNG plots.

Plots use matplotlib's object-oriented API (figures from
:func:`endofed.shared.util.figures.new_figure`, bound to the Agg canvas), so nothing
touches pyplot's global state or needs a display; this is safe inside Flower
server/client processes and threads. Tables are
:func:`endofed.shared.util.tables.markdown_table` (re-exported here).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from endofed.shared.util.figures import new_figure, save_figure
from endofed.shared.util.tables import markdown_table

logger = logging.getLogger(__name__)

HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("map50", "mAP@0.5"),
    ("map", "mAP@[.5:.95]"),
    ("accuracy", "Accuracy"),
    ("f1", "F1 (macro, lesion classes)"),
    ("f1_lesion", "F1 (lesion vs normal)"),
    ("sensitivity", "Sensitivity (lesion vs normal)"),
    ("specificity", "Specificity (lesion vs normal)"),
    ("auc", "AUC (one-vs-rest)"),
    ("auc_lesion", "AUC (lesion vs normal)"),
    ("dice", "Dice (mean per image)"),
    ("iou", "IoU (mean per image)"),
    ("dice_pooled", "Dice (pooled pixels)"),
    ("latency_ms", "Latency per image (ms)"),
    ("num_images", "Images"),
)


# --------------------------------------------------------------------- helpers
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


def _fmt(value: Any, digits: int = 4) -> str:
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


def _pct(value: Any) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{100 * f:.2f}%" if math.isfinite(f) else "n/a"


def _no_data(ax: Any, message: str = "no data") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


# ----------------------------------------------------------------- eval plots
def plot_roc(metrics: Mapping[str, Any], out_png: Path) -> Path:
    """One-vs-rest ROC curve per image class (from ``metrics["roc"]``)."""
    fig = new_figure(figsize=(5.5, 5))
    ax = fig.subplots()
    roc = metrics.get("roc") or {}
    if not roc:
        _no_data(ax, "no ROC: need positives and negatives")
    else:
        for name, curve in roc.items():
            auc = curve.get("auc")
            label = f"{name} (AUC {_fmt(auc, 3)})"
            ax.plot(curve["fpr"], curve["tpr"], label=label, linewidth=1.6)
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("ROC (one-vs-rest)")
    return save_figure(fig, out_png)


def plot_confusion_matrix(metrics: Mapping[str, Any], out_png: Path) -> Path:
    """Confusion matrix heat map: row-normalised colour, counts and row % in cells."""
    cm = np.asarray(metrics.get("confusion_matrix") or [], dtype=np.float64)
    names = list(metrics.get("class_names") or [str(i) for i in range(len(cm))])
    fig = new_figure(figsize=(1.2 * max(len(names), 2) + 2.5, 1.1 * max(len(names), 2) + 1.5))
    ax = fig.subplots()
    if cm.size == 0 or cm.sum() == 0:
        _no_data(ax)
    else:
        rows = cm.sum(axis=1, keepdims=True)
        share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                color = "white" if share[i, j] > 0.6 else "black"
                ax.text(
                    j,
                    i,
                    f"{int(cm[i, j])}\n{100 * share[i, j]:.1f}%",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=color,
                )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
    ax.set_title("Confusion matrix")
    return save_figure(fig, out_png)


def _loc_groups(loc: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    groups = list((loc.get("per_morphology") or {}).items())
    if loc.get("overall"):
        groups.append(("total", loc["overall"]))
    return groups


def plot_localization(metrics: Mapping[str, Any], out_png: Path) -> Path:
    """Share of lesions localised at each IoU threshold, grouped by morphology."""
    loc = metrics.get("localization") or {}
    thresholds = [float(t) for t in loc.get("thresholds") or []]
    groups = [(n, row) for n, row in _loc_groups(loc) if int(row.get("total", 0)) > 0]
    fig = new_figure(figsize=(1.6 * max(len(groups), 2) + 2.5, 4))
    ax = fig.subplots()
    if not groups or not thresholds:
        _no_data(ax, "no ground-truth lesions")
    else:
        x = np.arange(len(groups))
        width = 0.8 / len(thresholds)
        for k, t in enumerate(thresholds):
            shares = [_share(row, t) for _, row in groups]
            bars = ax.bar(
                x + (k - (len(thresholds) - 1) / 2) * width, shares, width, label=f"IoU >= {t:g}"
            )
            ax.bar_label(bars, labels=[f"{100 * s:.0f}" for s in shares], fontsize=7)
        ax.set_xticks(x, [f"{n}\n(n={int(r['total'])})" for n, r in groups])
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("Share of lesions localised")
        ax.legend(fontsize=8, ncols=min(len(thresholds), 4), loc="upper right")
    ax.set_title("Localisation by morphology")
    return save_figure(fig, out_png)


def _share(row: Mapping[str, Any], t: float) -> float:
    shares = row.get("share") or {}
    for key, value in shares.items():
        if math.isclose(float(key), t):
            return float(value) if value is not None and math.isfinite(float(value)) else 0.0
    return 0.0


def _hits(row: Mapping[str, Any], t: float) -> int:
    for key, value in (row.get("hits") or {}).items():
        if math.isclose(float(key), t):
            return int(value)
    return 0


# ------------------------------------------------------------------ markdown
def _headline_table(metrics: Mapping[str, Any]) -> str:
    rows = [
        (label, _fmt(metrics[key], 2 if key == "latency_ms" else 4))
        for key, label in HEADLINE_METRICS
        if key in metrics
    ]
    return markdown_table(["Metric", "Value"], rows)


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
                _fmt(num_gt.get(name), 0) if name in num_gt else "-",
                _fmt(ap50.get(name)) if name in ap50 else "-",
                _fmt(ap.get(name)) if name in ap else "-",
                _fmt(auc.get(name)),
                _fmt(recall.get(name)),
                _fmt(f1.get(name)),
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
    for name, row in _loc_groups(loc):
        cells: list[Any] = [name if name != "total" else "**Total**", int(row.get("total", 0))]
        for t in thresholds:
            cells += [_hits(row, t), _pct(_share_or_nan(row, t))]
        cells.append(_fmt(row.get("mean_iou"), 3))
        rows.append(cells)
    return markdown_table(headers, rows)


def _share_or_nan(row: Mapping[str, Any], t: float) -> float:
    return _share(row, t) if int(row.get("total", 0)) > 0 else float("nan")


def write_evaluation_report(
    metrics: Mapping[str, Any],
    out_dir: Path,
    *,
    title: str,
    extra_sections: Mapping[str, str] | None = None,
) -> Path:
    """Write ``metrics.json``, ``report.md`` and ``roc.png`` / ``confusion_matrix.png`` /
    ``localization.png`` into ``out_dir``; returns the path of ``report.md``.

    ``metrics`` is the output of :meth:`MetricAccumulator.compute`; missing parts are
    rendered as "n/a" / "no data". ``extra_sections`` maps a heading to Markdown text
    appended at the end (e.g. per-site tables or privacy budgets).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(
        json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    plot_roc(metrics, out_dir / "roc.png")
    plot_confusion_matrix(metrics, out_dir / "confusion_matrix.png")
    plot_localization(metrics, out_dir / "localization.png")

    loc = metrics.get("localization") or {}
    parts = [
        f"# {title}",
        "## Headline metrics",
        _headline_table(metrics),
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
        f"{_fmt(loc.get('score_threshold'), 2)}.",
        _localization_table(metrics),
        "![Localisation](localization.png)",
    ]
    for heading, body in (extra_sections or {}).items():
        parts += [f"## {heading}", body.rstrip()]
    report = out_dir / "report.md"
    report.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    logger.info("Evaluation report written to %s", report)
    return report


# ------------------------------------------------------------- run plots
def plot_metric_curves(df: Any, metrics: Sequence[str], out_png: Path) -> Path:
    """Per-round curves, one panel per metric and one line per site.

    ``df`` is a pandas DataFrame with a ``round`` column, optionally a ``site``
    column (e.g. ``"global"`` and one value per hospital), and the metric columns.
    """
    missing = [c for c in ("round", *metrics) if c not in df.columns]
    if missing:
        raise ValueError(
            f"plot_metric_curves: DataFrame lacks columns {missing} (has {list(df.columns)})"
        )
    n = max(len(metrics), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = new_figure(figsize=(4.2 * ncols, 3.2 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    groups = list(df.groupby("site", sort=True)) if "site" in df.columns else [("all", df)]
    for ax, metric in zip(axes, metrics):
        plotted = False
        for site, part in groups:
            part = part[["round", metric]].dropna().sort_values("round")
            if part.empty:
                continue
            ax.plot(part["round"], part[metric], marker="o", markersize=3, label=str(site))
            plotted = True
        if not plotted:
            _no_data(ax)
        else:
            ax.set_xlabel("round")
            ax.grid(alpha=0.3)
            if len(groups) > 1:
                ax.legend(fontsize=7)
        ax.set_title(metric)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_site_bars(df: Any, metric: str, out_png: Path) -> Path:
    """Bar per site of ``metric`` (at the last round of each site if ``round`` exists)."""
    missing = [c for c in ("site", metric) if c not in df.columns]
    if missing:
        raise ValueError(
            f"plot_site_bars: DataFrame lacks columns {missing} (has {list(df.columns)})"
        )
    data = df.dropna(subset=[metric])
    if "round" in data.columns:
        data = data.sort_values("round").groupby("site", sort=True).tail(1)
    data = data.sort_values("site")
    fig = new_figure(figsize=(max(4.0, 0.9 * len(data) + 2), 3.6))
    ax = fig.subplots()
    if data.empty:
        _no_data(ax)
    else:
        sites = [str(s) for s in data["site"]]
        values = data[metric].astype(float).to_numpy()
        bars = ax.bar(sites, values, color="tab:blue")
        ax.bar_label(bars, labels=[_fmt(v, 3) for v in values], fontsize=8)
        ax.set_ylabel(metric)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{metric} per site")
    return save_figure(fig, out_png)
