"""The experiment's results table (``results.csv``) and its mean ± std summary.

One row per (arm, dp, seed, model, eval site) with the metrics of
:data:`METRICS`; ``model`` is ``global`` for central and federated arms and the
hospital's name for each local-only model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from endofed.shared.util.atomic import atomic_write_text
from endofed.simulations.site_evaluator import POOLED

#: Metrics reported per row of ``results.csv`` (``flat_scalars`` keys).
METRICS: tuple[str, ...] = (
    "map50", "map", "dice_lesion", "dice", "iou", "auc", "sensitivity", "specificity",
    "accuracy", "f1",
)
#: Columns of ``results.csv``.
COLUMNS: tuple[str, ...] = (
    "arm", "dp", "seed", "model", "eval_site", *METRICS, "epsilon", "num_images",
)
#: Display names of the metric columns in tables and plots.
METRIC_LABELS: dict[str, str] = {
    "map50": "mAP@0.5", "map": "mAP@[.5:.95]", "dice_lesion": "Dice (lesion images)",
    "dice": "Dice (all images)", "iou": "IoU (all images)", "auc": "AUC",
    "sensitivity": "Sens.", "specificity": "Spec.", "accuracy": "Acc.", "f1": "F1",
    "epsilon": "ε spent",
}


def result_rows(arm: str, dp: str, seed: int, model: str,
                metrics: Mapping[str, Mapping[str, float]],
                epsilon: float = float("nan")) -> list[dict[str, Any]]:
    """Rows of ``results.csv`` for one model: one per eval site of ``metrics``."""
    rows = []
    for eval_site, m in metrics.items():
        row: dict[str, Any] = {"arm": arm, "dp": dp, "seed": seed, "model": model,
                               "eval_site": eval_site}
        row.update({k: float(m.get(k, float("nan"))) for k in METRICS})
        row["epsilon"] = epsilon
        row["num_images"] = int(m.get("num_images", 0) or 0)
        rows.append(row)
    return rows


def results_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """``rows`` as a DataFrame with exactly the :data:`COLUMNS`, in order."""
    return pd.DataFrame(list(rows), columns=list(COLUMNS))


def write_results_csv(path: Path, df: pd.DataFrame) -> Path:
    """Write ``df`` as CSV (no index), atomically: readers never see half a table."""
    return atomic_write_text(path, df.to_csv(index=False))


def _mean_std(mean: float, std: float) -> str:
    if mean != mean:  # nan
        return "–"
    return f"{mean:.3f}" if std != std else f"{mean:.3f} ± {std:.3f}"


def summary_table(df: pd.DataFrame, eval_site: str = POOLED,
                  columns: Sequence[str] = (*METRICS, "epsilon")) -> pd.DataFrame:
    """Mean ± std over seeds per (arm, dp) on ``eval_site`` (local models averaged
    within a seed first)."""
    sub = df[df["eval_site"] == eval_site]
    if sub.empty:
        return pd.DataFrame(columns=["arm", "dp", "seeds", *columns])
    cols = list(columns)
    per_seed = sub.groupby(["arm", "dp", "seed"], sort=False)[cols].mean().reset_index()
    g = per_seed.groupby(["arm", "dp"], sort=False)
    mean, std, n = g[cols].mean(), g[cols].std(), g["seed"].nunique()
    out = pd.DataFrame({"seeds": n})
    for c in cols:
        out[c] = [_mean_std(m, s) for m, s in zip(mean[c], std[c])]
    return out.reset_index()
