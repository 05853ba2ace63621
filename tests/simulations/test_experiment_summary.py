"""``summary.md`` and ``results.csv`` of a grid, from a hand-made results table."""

from __future__ import annotations

import math

import pandas as pd

from endofed.simulations.experiment_results import (
    COLUMNS,
    METRICS,
    result_rows,
    results_frame,
    summary_table,
    write_results_csv,
)
from endofed.simulations.experiment_spec import ExperimentSpec
from endofed.simulations.experiment_summary import write_summary
from endofed.simulations.virtual_sites import VirtualSite


def _results() -> pd.DataFrame:
    rows = []
    for arm, dp, seed, map50 in [("central", "none", 0, 0.5), ("central", "none", 1, 0.7),
                                 ("fedavg", "8", 0, 0.25)]:
        metrics = {site: {"map50": map50, "dice": 0.5, "num_images": 3}
                   for site in ("site_1", "pooled", *(("site_2",) if arm == "central" else ()))}
        rows += result_rows(arm, dp, seed, "global", metrics,
                            epsilon=7.5 if dp == "8" else math.nan)
    return results_frame(rows)


def test_result_rows_fill_every_column(tmp_path):
    df = _results()
    assert list(df.columns) == list(COLUMNS)
    assert df["auc"].isna().all() and (df["num_images"] == 3).all()
    path = write_results_csv(tmp_path / "results.csv", df)
    assert path.read_text() == df.to_csv(index=False)
    assert list(pd.read_csv(path).columns) == list(COLUMNS)
    assert not [p for p in tmp_path.iterdir() if p.name != "results.csv"]  # no temp file


def test_summary_table_is_mean_and_std_over_seeds():
    table = summary_table(_results(), columns=("map50", "dice", "auc", "epsilon"))
    assert table.to_dict("records") == [
        {"arm": "central", "dp": "none", "seeds": 2, "map50": "0.600 ± 0.141",
         "dice": "0.500 ± 0.000", "auc": "–", "epsilon": "–"},
        {"arm": "fedavg", "dp": "8", "seeds": 1, "map50": "0.250", "dice": "0.500",
         "auc": "–", "epsilon": "7.500"},
    ]
    assert list(summary_table(_results()).columns) == ["arm", "dp", "seeds", *METRICS,
                                                       "epsilon"]


def test_summary_markdown(tmp_path):
    spec = ExperimentSpec(out=tmp_path, sites=2, seeds=[0, 1], dp=[0.0, 8.0])
    record = object()  # only counted
    sites = [VirtualSite("site_1", tmp_path / "a", train=[record] * 3, val=[record]),  # type: ignore[list-item]
             VirtualSite("site_2", tmp_path / "b", train=[], val=[])]
    path = write_summary(spec, _results(), [tmp_path / "plots" / "rounds_map50.png"], sites)
    text = path.read_text()
    assert text.startswith("# EndoFed experiment\n\n| Setting | Value |")
    assert "| Hospitals | 2 by `iid` |" in text
    assert "| Rounds × local epochs | 5 × 1 for federated arms = 5 epochs" in text
    assert "| DP (target ε per site, federated arms only) | none, 8 |" in text
    assert "| Lesion threshold rule | `youden` |" in text and "| Software | endofed " in text
    assert "| hospital | train | val |\n|---|---|---|\n| site_1 | 3 | 1 |\n| site_2 | 0 | 0 |\n" \
        in text
    assert "| arm | dp | seeds | mAP@0.5 | mAP@[.5:.95] | Dice (lesion images) | " \
        "Dice (all images) |" in text
    assert "| central | none | 2 | 0.600 ± 0.141 |" in text
    assert "Held-out" not in text
    # per hospital: a hospital an arm was not evaluated on reads n/a
    assert "| arm | dp | site_1 | site_2 |\n|---|---|---|---|\n| central | none | 0.600 | 0.600 |" \
        "\n| fedavg | 8 | 0.250 | n/a |\n" in text
    assert text.endswith("## Plots\n\n![rounds_map50](plots/rounds_map50.png)\n")
