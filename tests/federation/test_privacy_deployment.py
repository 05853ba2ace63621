"""A hospital whose privacy budget is spent declines, and the study goes on without it.

Real loopback deployment: hosp-3 trains under DP (eps 8) with its ledger in its own
state dir; the other two train without DP. The first run spends hosp-3's budget (the
noise is calibrated to the planned study); a second study with a new run name finds the
ledger on disk and hosp-3 declines explicitly instead of training with the enormous
noise multiplier that would squeeze a round into the epsilon left over.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from endofed.simulations.deployment import LocalDeployment
from endofed.simulations.federated import project_root

pytestmark = pytest.mark.slow


def test_exhausted_site_declines_in_a_new_study(tmp_path, hospital_dirs, deploy_run_config):
    state = tmp_path / "state-hosp-3"
    nodes = [
        {"data-path": str(hospital_dirs[0]), "site-name": "hosp-1"},
        {"data-path": str(hospital_dirs[1]), "site-name": "hosp-2"},
        {"data-path": str(hospital_dirs[2]), "site-name": "hosp-3",
         "dp-epsilon": 8.0, "dp-delta": 1e-4, "state-dir": str(state)},
    ]
    runs = tmp_path / "runs"
    base = {**deploy_run_config, "num-server-rounds": 1, "runs-dir": str(runs.resolve()),
            "min-train-nodes": 2, "min-evaluate-nodes": 2, "min-available-nodes": 3,
            "round-timeout": 900.0}
    with LocalDeployment(project_root(), sites=nodes, log_dir=tmp_path / "logs") as dep:
        dep.run({**base, "run-name": "study-1"}, timeout=1500).check()
        dep.run({**base, "run-name": "study-2"}, timeout=1500).check()
    first = pd.read_csv(runs / "study-1" / "metrics.csv")
    row = first[(first.site == "hosp-3")].iloc[0]
    assert 0 < row["epsilon-spent"] <= 8.0
    second = pd.read_csv(runs / "study-2" / "metrics.csv")
    declined = second[second.site == "hosp-3"].iloc[0]
    assert declined.get("declined", 0) == 1
    glob = second[second.site == "global"].iloc[0]
    assert int(glob["sites-aggregated"]) == 2  # the study went on with the others
    assert "declined" in (runs / "study-2" / "events.md").read_text()
    ledger = json.loads(next(state.rglob("privacy-ledger.json")).read_text())
    assert ledger  # the ledger survived both studies on the site's own disk
