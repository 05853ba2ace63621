"""Experiment plots: which are drawn for which results."""

from __future__ import annotations

import pandas as pd

from endofed.simulations.experiment_plots import write_plots


def test_utility_vs_epsilon_plot_only_with_dp_runs(tmp_path):
    def rows(arm, dp, map50):
        return [{"arm": arm, "dp": dp, "seed": 0, "model": "global", "eval_site": site,
                 "map50": map50, "dice": 0.5, "epsilon": float("nan")}
                for site in ("site_1", "pooled")]

    plain = pd.DataFrame(rows("central", "none", 0.6) + rows("fedavg", "none", 0.5))
    names = [p.name for p in write_plots(tmp_path, plain, [], ["central", "fedavg"])]
    assert "utility_vs_epsilon.png" not in names
    assert "per_site_map50.png" in names
    with_dp = pd.concat([plain, pd.DataFrame(rows("fedavg", "8", 0.4) + rows("fedavg", "1", 0.2))])
    names = [p.name for p in write_plots(tmp_path, with_dp, [], ["central", "fedavg"])]
    assert "utility_vs_epsilon.png" in names
    assert (tmp_path / "plots" / "utility_vs_epsilon.png").stat().st_size > 0


def test_round_plots_show_lesion_dice_and_are_written_whole(tmp_path):
    """Issue 15: the Dice plotted per round is the lesion images' Dice; files are whole."""
    from PIL import Image

    from endofed.simulations.experiment_results import results_frame

    run_dir = tmp_path / "fedavg_none_0"
    run_dir.mkdir()
    pd.DataFrame([{"round": r, "site": "global", "map50": 0.0, "dice_lesion": 0.0,
                   "auc": 0.5} for r in (1, 2, 3)]).to_csv(run_dir / "metrics.csv", index=False)
    markers = [{"arm": "fedavg", "dp": "none", "run_dir": str(run_dir)}]
    written = write_plots(tmp_path, results_frame([]), markers, ["fedavg"])
    assert sorted(p.name for p in written) == ["rounds_auc.png", "rounds_dice_lesion.png",
                                               "rounds_map50.png"]
    with Image.open(tmp_path / "plots" / "rounds_map50.png") as im:
        assert im.format == "PNG"
    assert not list((tmp_path / "plots").glob(".*.tmp"))
