"""The run report: final global metrics, per-round curves, per-site bars, privacy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from endofed.shared.metrics.formatting import fmt_value
from endofed.shared.metrics.report import (
    plot_metric_curves,
    plot_site_bars,
    write_evaluation_report,
)
from endofed.shared.model import read_checkpoint
from endofed.shared.util.tables import dataframe_table

log = logging.getLogger(__name__)

CURVE_METRICS = ["map50", "map", "dice", "auc", "sensitivity", "specificity",
                 "op_sensitivity", "op_specificity", "train-loss"]


def _latest_round_metrics(run_dir: Path) -> tuple[int, dict] | None:
    files = sorted((run_dir / "rounds").glob("round_*.json"))
    if not files:
        return None
    path = files[-1]
    return int(path.stem.split("_")[1]), json.loads(path.read_text())


def render_run_report(run_dir: Path) -> Path:
    """(Re-)write ``report.md`` and its PNGs from what the run directory holds."""
    run_dir = Path(run_dir)
    csv = run_dir / "metrics.csv"
    if not csv.exists():
        raise FileNotFoundError(
            f"{csv} not found: is {run_dir} an EndoFed run directory (runs/<run-name>)?"
        )
    df = pd.read_csv(csv)
    sections: dict[str, str] = {}
    latest = _latest_round_metrics(run_dir)
    metrics = latest[1] if latest else {}

    curves = [m for m in CURVE_METRICS if m in df.columns]
    if curves:
        plot_metric_curves(df, curves, run_dir / "rounds.png")
        sections["Per-round curves"] = "![per-round metrics](rounds.png)"

    last_round = int(df["round"].max()) if not df.empty else 0
    sites = df[(df["round"] == last_round) & (df["site"] != "global")]
    site_cols = [c for c in ("num-examples", "map50", "dice", "auc", "sensitivity",
                             "specificity", "train-loss", "epsilon-spent", "epsilon-target")
                 if c in sites.columns]
    if not sites.empty and site_cols:
        sections["Per-site metrics (last round)"] = dataframe_table(
            sites[["site"] + site_cols].reset_index(drop=True)
        )
        bar_metric = next((m for m in ("map50", "dice", "auc") if m in sites.columns), None)
        if bar_metric:
            plot_site_bars(df, bar_metric, run_dir / "sites.png")
            sections["Per-site metrics (last round)"] += "\n\n![per-site](sites.png)"

    if "epsilon-spent" in df.columns:
        eps = df[df["site"] != "global"].pivot_table(
            index="round", columns="site", values="epsilon-spent"
        )
        if not eps.empty:
            plot_metric_curves(
                df[df["site"] != "global"], ["epsilon-spent"], run_dir / "epsilon.png"
            )
            sections["Privacy: epsilon spent per site"] = (
                dataframe_table(eps.reset_index()) + "\n\n![epsilon](epsilon.png)"
            )

    models = _models_section(run_dir)
    if models:
        sections["Saved models"] = models

    for extra, heading in (("audit.md", "Privacy audit (membership inference)"),
                           ("events.md", "Events (declined or rejected updates)")):
        p = run_dir / extra
        if p.exists():
            sections[heading] = p.read_text()

    title = f"EndoFed run {run_dir.name}: round {last_round}"
    out = write_evaluation_report(metrics, run_dir, title=title, extra_sections=sections)
    log.info("report written to %s", out)
    return out


def _models_section(run_dir: Path) -> str:
    """Which round each saved global model is, and the threshold it carries."""
    lines = []
    for name, what in (("final_model.pt", "the global model after round {round}"),
                       ("model_best.pt", "round {round}, the best federated validation "
                                         "mAP@0.5 ({val_map50})")):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            extra = read_checkpoint(path).get("extra", {})
        except Exception as exc:  # a report must not fail on one unreadable file
            log.warning("%s unreadable: %s", path, exc)
            continue
        fields = {"round": extra.get("round", extra.get("rounds", "?")),
                  "val_map50": fmt_value(extra.get("val_map50"))}
        op = extra.get("operating_point") or {}
        verdict = (f"lesion when lesion probability > {fmt_value(op.get('threshold'))} "
                   f"(rule `{op.get('rule')}`, sensitivity {fmt_value(op.get('sensitivity'))}, "
                   f"specificity {fmt_value(op.get('specificity'))})"
                   if op.get("threshold") is not None else "no stored threshold (0.5 is used)")
        lines.append(f"* `{name}`: {what.format(**fields)}; {verdict}.")
    return "\n".join(lines)
