"""Report figures: ROC, confusion matrix, localisation bars, per-round curves, site bars.

Plots use matplotlib's object-oriented API (figures from
:func:`endofed.shared.util.figures.new_figure`, bound to the Agg canvas), so nothing
touches pyplot's global state or needs a display; this is safe inside Flower
server/client processes and threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from endofed.shared.metrics.formatting import (
    UNIT_INTERVAL_METRICS,
    fmt_value,
    localization_groups,
    metric_label,
    share_at,
)
from endofed.shared.util.atomic import atomic_save
from endofed.shared.util.figures import new_figure


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
            label = f"{name} (AUC {fmt_value(auc, 3)})"
            ax.plot(curve["fpr"], curve["tpr"], label=label, linewidth=1.6)
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title("ROC (one-vs-rest)")
    return save_png(fig, out_png)


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
    return save_png(fig, out_png)


def plot_localization(metrics: Mapping[str, Any], out_png: Path) -> Path:
    """Share of lesions localised at each IoU threshold, grouped by morphology."""
    loc = metrics.get("localization") or {}
    thresholds = [float(t) for t in loc.get("thresholds") or []]
    groups = [(n, row) for n, row in localization_groups(loc) if int(row.get("total", 0)) > 0]
    fig = new_figure(figsize=(1.6 * max(len(groups), 2) + 2.5, 4))
    ax = fig.subplots()
    if not groups or not thresholds:
        _no_data(ax, "no ground-truth lesions")
    else:
        x = np.arange(len(groups))
        width = 0.8 / len(thresholds)
        for k, t in enumerate(thresholds):
            shares = [share_at(row, t) for _, row in groups]
            bars = ax.bar(
                x + (k - (len(thresholds) - 1) / 2) * width, shares, width, label=f"IoU >= {t:g}"
            )
            ax.bar_label(bars, labels=[f"{100 * s:.0f}%" for s in shares], fontsize=7)
        ax.set_xticks(x, [f"{n}\n(n={int(r['total'])})" for n, r in groups])
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("Share of lesions localised")
        ax.legend(fontsize=8, ncols=min(len(thresholds), 4), loc="upper right")
    ax.set_title("Localisation by morphology")
    return save_png(fig, out_png)


# ------------------------------------------------------------- run plots
GLOBAL_SITE = "global"


def _site_styles(sites: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One look per site across all panels: ``global`` thick, black, drawn on top; the
    hospitals thin, in the colour cycle (the same colour for a site in every panel)."""
    styles: dict[str, dict[str, Any]] = {}
    hospitals = [s for s in sites if s != GLOBAL_SITE]
    for i, site in enumerate(hospitals):
        styles[site] = {"color": f"C{i % 10}", "linewidth": 1.3, "alpha": 0.85,
                        "marker": "o", "markersize": 3, "zorder": 2, "label": site}
    if GLOBAL_SITE in sites:
        styles[GLOBAL_SITE] = {"color": "black", "linewidth": 2.8, "marker": "s",
                               "markersize": 5, "zorder": 10,
                               "label": "global (merged over sites)"}
    return styles


def _round_axis(ax: Any, rounds: Sequence[float]) -> None:
    """Whole-numbered round ticks (never 1.5) over the rounds present."""
    values = sorted({int(r) for r in rounds})
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(max(len(values), 1), 10)))
    if values:
        lo, hi = values[0], values[-1]
        pad = 0.3 if hi == lo else 0.05 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("round")


def _value_axis(ax: Any, metric: str, values: Sequence[float],
                limits: Mapping[str, tuple[float, float]] | None = None) -> None:
    """The metric's natural range: [0, 1] for rates, AP, AUC and Dice; from 0 for
    non-negative quantities (loss, time, ε), so a constant is never blown up."""
    if limits and metric in limits:
        ax.set_ylim(*limits[metric])
        return
    if metric in UNIT_INTERVAL_METRICS:
        ax.set_ylim(-0.02, 1.02)
        return
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if finite and min(finite) >= 0:
        ax.set_ylim(0, max(max(finite) * 1.1, 1e-6))


def plot_metric_curves(
    df: Any,
    metrics: Sequence[str],
    out_png: Path,
    *,
    limits: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
) -> Path:
    """:func:`metric_curves_figure` written to ``out_png`` (atomically)."""
    return save_png(metric_curves_figure(df, metrics, limits=limits, title=title), out_png)


def metric_curves_figure(
    df: Any,
    metrics: Sequence[str],
    *,
    limits: Mapping[str, tuple[float, float]] | None = None,
    title: str | None = None,
) -> Figure:
    """Per-round curves, one panel per metric and one line per site.

    ``df`` is a pandas DataFrame with a ``round`` column, optionally a ``site``
    column (``"global"`` and one value per hospital), and the metric columns. Panel
    titles are the metrics in words, rounds are whole numbers, rates sit on a 0-1 axis
    (``limits`` overrides a metric's axis), the ``global`` line is thick, black, on top
    and first in the one legend of the figure.
    """
    missing = [c for c in ("round", *metrics) if c not in df.columns]
    if missing:
        raise ValueError(
            f"plot_metric_curves: DataFrame lacks columns {missing} (has {list(df.columns)})"
        )
    n = max(len(metrics), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = new_figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.6))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    if "site" in df.columns:
        names = sorted({str(s) for s in df["site"]}, key=lambda s: (s != GLOBAL_SITE, s))
        groups = [(name, df[df["site"].astype(str) == name]) for name in names]
    else:
        names, groups = ["all"], [("all", df)]
    styles = _site_styles(names)
    drawn: dict[str, Any] = {}
    for ax, metric in zip(axes, metrics):
        values: list[float] = []
        for site, part in groups:
            part = part[["round", metric]].dropna().sort_values("round")
            if part.empty:
                continue
            style = styles.get(site, {"label": site})
            (line,) = ax.plot(part["round"], part[metric], **style)
            drawn.setdefault(site, line)
            values += part[metric].astype(float).tolist()
        if not values:
            _no_data(ax)
        else:
            _round_axis(ax, df["round"].dropna().tolist())
            _value_axis(ax, metric, values, limits)
            ax.grid(alpha=0.3)
        ax.set_title(metric_label(metric))
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if len(drawn) > 1 or (drawn and GLOBAL_SITE not in drawn and "site" in df.columns):
        order = [s for s in names if s in drawn]  # global first
        fig.legend([drawn[s] for s in order], [styles[s]["label"] for s in order],
                   loc="lower center", ncols=min(len(order), 5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 if len(drawn) > 1 else 0, 1, 1))
    return fig


def plot_site_bars(df: Any, metric: str, out_png: Path) -> Path:
    """:func:`site_bars_figure` written to ``out_png`` (atomically)."""
    return save_png(site_bars_figure(df, metric), out_png)


def site_bars_figure(df: Any, metric: str) -> Figure:
    """Bar per site of ``metric`` (at the last round of each site if ``round`` exists);
    ``global`` is drawn apart (black, first)."""
    missing = [c for c in ("site", metric) if c not in df.columns]
    if missing:
        raise ValueError(
            f"plot_site_bars: DataFrame lacks columns {missing} (has {list(df.columns)})"
        )
    data = df.dropna(subset=[metric])
    if "round" in data.columns:
        data = data.sort_values("round").groupby("site", sort=True).tail(1)
    data = data.assign(_order=[(str(s) != GLOBAL_SITE, str(s)) for s in data["site"]])
    data = data.sort_values("_order")
    fig = new_figure(figsize=(max(4.0, 0.9 * len(data) + 2), 3.6))
    ax = fig.subplots()
    label = metric_label(metric)
    if data.empty:
        _no_data(ax)
    else:
        sites = [str(s) for s in data["site"]]
        values = data[metric].astype(float).to_numpy()
        hospitals = [s for s in sites if s != GLOBAL_SITE]
        colors = ["black" if s == GLOBAL_SITE else f"C{hospitals.index(s) % 10}"
                  for s in sites]
        bars = ax.bar(sites, values, color=colors)
        ax.bar_label(bars, labels=[fmt_value(v, 3) for v in values], fontsize=8)
        ax.set_ylabel(label)
        if metric in UNIT_INTERVAL_METRICS:
            ax.set_ylim(0, 1.08)
        ax.tick_params(axis="x", rotation=30)
        ax.grid(axis="y", alpha=0.3)
    last = f", round {int(df['round'].max())}" if "round" in df.columns and len(df) else ""
    ax.set_title(f"{label} per site{last}")
    return fig


def save_png(fig: Any, out_png: Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` to ``out_png`` atomically: a reader sees the old image or the new
    one, never a half-written file (reports are re-rendered while a run goes on)."""
    out_png = Path(out_png)
    return atomic_save(
        out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"),
        durable=False,
    )
