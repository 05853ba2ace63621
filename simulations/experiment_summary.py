"""``summary.md``: the experiment's settings, hospitals and result tables in Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from endofed.server.report import software_versions
from endofed.shared.util.atomic import atomic_write_text
from endofed.shared.util.tables import dataframe_table, markdown_table
from endofed.simulations.experiment_results import METRIC_LABELS, summary_table
from endofed.simulations.experiment_spec import ExperimentSpec, dp_label
from endofed.simulations.site_evaluator import HOLDOUT, POOLED
from endofed.simulations.virtual_sites import VirtualSite


def _settings(spec: ExperimentSpec) -> list[str]:
    """The grid's settings as a two-column table (what a reader needs to repeat it)."""
    cfg = spec.config(spec.seeds[0] if spec.seeds else 0)
    data = ", ".join(str(p) for p in spec.data) if spec.data else (
        f"synthetic, {spec.images_per_site} images per hospital")
    extra = ", ".join(f"{k}={v}" for k, v in sorted(spec.extra_config.items()))
    rows = [
        ("Arms", ", ".join(f"`{a.name}`" for a in spec.arms)),
        ("Data", data + (f"; held-out hospital {spec.holdout_site}" if spec.holdout_site
                         else "")),
        ("Hospitals", f"{spec.sites} by `{spec.partition}`"
                      + (" with simulated device shift" if spec.device_shift else "")),
        ("Model", f"preset `{spec.preset}`, {spec.image_size} px, batch {spec.batch_size}"),
        ("Rounds × local epochs", f"{spec.rounds} × {spec.local_epochs} for federated arms "
                                  f"= {spec.rounds * spec.local_epochs} epochs for central "
                                  "and each local model"),
        ("DP (target ε per site, federated arms only)",
         ", ".join(dp_label(e) for e in spec.dp)),
        ("Seeds", ", ".join(str(s) for s in spec.seeds)),
        ("Lesion threshold rule", f"`{cfg.federation.threshold_rule}`"),
        ("Other run-config keys", extra or "none"),
        ("Software", software_versions()),
    ]
    return [markdown_table(["Setting", "Value"], rows), "",
            "Dice (lesion images) is the mean Dice over validation images with a lesion "
            "mask; Dice (all images) also counts each lesion-free image as 1 when no mask "
            "is predicted and 0 otherwise, so it rises with the share of lesion-free images."]


def _per_site_map50(df: pd.DataFrame) -> pd.DataFrame:
    """mAP@0.5 per (arm, dp) x hospital, mean over seeds (and local models)."""
    per_site = df[~df["eval_site"].isin([POOLED, HOLDOUT])]
    per_seed = per_site.groupby(["arm", "dp", "eval_site", "seed"], sort=False)["map50"]\
        .mean().reset_index()
    return per_seed.groupby(["arm", "dp", "eval_site"], sort=False)["map50"].mean()\
        .unstack("eval_site").reset_index()


def write_summary(spec: ExperimentSpec, df: pd.DataFrame, plots: Sequence[Path],
                  sites: Sequence[VirtualSite]) -> Path:
    """``summary.md``: settings, hospitals, the pooled table, holdout and per-site tables."""
    lines = [
        "# EndoFed experiment",
        "",
        *_settings(spec),
        "",
        markdown_table(["hospital", "train", "val"],
                       [[s.name, len(s.train), len(s.val)] for s in sites]),
        "",
        "## Pooled validation (all hospitals' val splits), mean ± std over seeds",
        "",
        "`local` = the mean over the hospitals' local-only models.",
        "",
        dataframe_table(summary_table(df).rename(columns=METRIC_LABELS)),
        "",
    ]
    if (df["eval_site"] == HOLDOUT).any():
        lines += [f"## Held-out hospital ({spec.holdout_site}), not used in training", "",
                  dataframe_table(summary_table(df, HOLDOUT).rename(columns=METRIC_LABELS)),
                  ""]
    if not df[~df["eval_site"].isin([POOLED, HOLDOUT])].empty:
        lines += ["## mAP@0.5 per hospital (mean over seeds)", "",
                  dataframe_table(_per_site_map50(df), float_fmt="{:.3f}"), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.relative_to(spec.out)})" for p in plots]
    return atomic_write_text(spec.out / "summary.md", "\n".join(lines) + "\n")
