"""DP-SGD through the real Flower runtime: per-site epsilon per round in metrics and report."""

from __future__ import annotations

import pandas as pd

from endofed.simulations.federated import run_simulation


def test_epsilon_per_round_is_non_decreasing_and_within_target(tmp_path):
    cfg = {
        "preset": "tiny", "image-size": 64, "batch-size": 4, "dp-batch-size": 0,
        "local-epochs": 1, "synthetic-images-per-site": 10, "threads": 1, "num-server-rounds": 3,
        "dp-epsilon": 8.0, "dp-delta": 1e-4, "seed": 1,
        "min-train-nodes": 2, "min-evaluate-nodes": 2,
    }
    run_dir = run_simulation(cfg, num_sites=2, runs_dir=tmp_path, run_name="dp",
                             timeout=900).run_dir
    df = pd.read_csv(run_dir / "metrics.csv")
    sites = df[df.site != "global"]
    assert set(sites.site) == {"site_1", "site_2"}
    for _, rows in sites.groupby("site"):
        eps = rows.sort_values("round")["epsilon-spent"].to_numpy()
        assert len(eps) == 3
        assert (eps > 0).all()
        assert (eps[1:] >= eps[:-1]).all()
        assert eps[-1] <= 8.0 + 1e-6
        assert (rows["epsilon-target"] == 8.0).all()
    # the ledger lives under the runs dir in simulation and survives the run
    assert list((tmp_path / "_state").rglob("privacy-ledger.json"))
    report = (run_dir / "report.md").read_text()
    assert "epsilon spent per site" in report and (run_dir / "epsilon.png").exists()
