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
