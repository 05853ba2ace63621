"""The experiment's plots: metric per round, utility vs ε, per-hospital bars."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator, NullFormatter

from endofed.shared.metrics.plots import save_png as save_figure
from endofed.shared.util.figures import new_figure
from endofed.simulations.experiment_results import METRIC_LABELS, METRICS
from endofed.simulations.experiment_spec import CENTRAL
from endofed.simulations.site_evaluator import POOLED


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def plot_rounds(plot_dir: Path, markers: Sequence[Mapping[str, Any]]) -> list[Path]:
    """``rounds_<metric>.png``: server-merged metric per round of each federated run
    (mean over seeds), from the runs' ``metrics.csv``."""
    curves: dict[str, list[pd.DataFrame]] = {}
    for m in markers:
        metrics_csv = Path(m.get("run_dir") or "") / "metrics.csv"
        if m.get("run_dir") and metrics_csv.exists():
            d = pd.read_csv(metrics_csv)
            curves.setdefault(f"{m['arm']} (dp {m['dp']})", []).append(d[d["site"] == "global"])
    written: list[Path] = []
    for metric in ("map50", "dice_lesion", "auc") if curves else ():
        fig = new_figure(figsize=(6, 4))
        ax = fig.subplots()
        for label, runs in curves.items():
            d = pd.concat(runs)
            if metric in d.columns:
                mean = d.groupby("round")[metric].mean()
                ax.plot(mean.index, mean.values, marker="o", label=label)
        ax.set_ylim(-0.02, 1.02)  # rates, AP and Dice live in [0, 1]
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{_label(metric)} per round (server-merged)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(save_figure(fig, plot_dir / f"rounds_{metric}.png"))
    return written


def plot_utility_vs_epsilon(plot_dir: Path, df: pd.DataFrame,
                            arm_order: Sequence[str]) -> list[Path]:
    """``utility_vs_epsilon.png``: pooled mAP@0.5 per DP budget of each arm, with its
    no-DP and the central level as lines; nothing without DP runs."""
    pooled = df[df["eval_site"] == POOLED]
    present = [m for m in METRICS if m in df.columns]
    seed_mean = pooled.groupby(["arm", "dp", "seed"], sort=False)[present].mean()\
        .groupby(["arm", "dp"], sort=False).mean().reset_index()
    dp_rows = seed_mean[seed_mean["dp"] != "none"]
    if dp_rows.empty:
        return []
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, arm in enumerate(a for a in arm_order if a in set(dp_rows["arm"])):
        color = f"C{i}"
        d = dp_rows[dp_rows["arm"] == arm].assign(eps=lambda x: x["dp"].astype(float))
        d = d.sort_values("eps")
        ax.plot(d["eps"], d["map50"], marker="o", color=color, label=f"{arm} (DP)")
        base = seed_mean[(seed_mean["arm"] == arm) & (seed_mean["dp"] == "none")]
        if len(base):
            ax.axhline(float(base["map50"].iloc[0]), ls="--", color=color,
                       label=f"{arm} (no DP)")
    central = seed_mean[seed_mean["arm"] == CENTRAL]
    if len(central):
        ax.axhline(float(central["map50"].iloc[0]), ls=":", color="k", label="central")
    ax.set_xscale("log")
    eps_ticks = sorted({float(v) for v in dp_rows["dp"]})
    ax.set_xticks(eps_ticks, [f"{v:g}" for v in eps_ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("target ε per site")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("mAP@0.5 (pooled val)")
    ax.set_title("Utility vs privacy budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [save_figure(fig, plot_dir / "utility_vs_epsilon.png")]


def plot_per_site(plot_dir: Path, df: pd.DataFrame, arm_order: Sequence[str]) -> list[Path]:
    """``per_site_<metric>.png``: bars per hospital and arm (no DP, mean over seeds and
    local models)."""
    sub = df[(df["dp"] == "none") & (df["eval_site"] != POOLED)]
    if sub.empty:
        return []
    site_names = list(dict.fromkeys(sub["eval_site"]))
    arms = [a for a in arm_order if a in set(sub["arm"])]
    written: list[Path] = []
    for metric in ("map50", "dice_lesion"):
        if metric not in sub.columns or sub[metric].isna().all():
            continue
        fig = new_figure(figsize=(max(6, 1.2 * len(site_names) * max(1, len(arms)) / 2), 4))
        ax = fig.subplots()
        width = 0.8 / max(1, len(arms))
        for i, arm in enumerate(arms):
            vals = sub[sub["arm"] == arm].groupby(["eval_site", "seed"])[metric].mean()\
                .groupby("eval_site").mean()
            xs = np.arange(len(site_names)) + i * width
            ax.bar(xs, [vals.get(s, np.nan) for s in site_names], width, label=arm)
        ax.set_ylim(0, 1.02)
        ax.set_xticks(np.arange(len(site_names)) + width * (len(arms) - 1) / 2)
        ax.set_xticklabels(site_names)
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{_label(metric)} per hospital (val split)")
        ax.legend(fontsize=7)
        written.append(save_figure(fig, plot_dir / f"per_site_{metric}.png"))
    return written


def write_plots(out: Path, df: pd.DataFrame, markers: Sequence[Mapping[str, Any]],
                arm_order: Sequence[str]) -> list[Path]:
    """All plots of ``df`` (and the runs named by ``markers``) under ``out/plots``."""
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    return [*plot_rounds(plot_dir, markers), *plot_utility_vs_epsilon(plot_dir, df, arm_order),
            *plot_per_site(plot_dir, df, arm_order)]
