"""EndoFed on a real loopback deployment: SuperLink + one flower-supernode per hospital.

Each hospital is a SuperNode whose node config names its own data folder and site
name (as `endofed site join` sets it up); nothing is simulated. These runs start
several Python processes per round, so they are marked slow.
"""

from __future__ import annotations

import json
import threading
import time

import pandas as pd
import pytest

from endofed.simulations.deployment import LocalDeployment
from endofed.simulations.federated import project_root
from endofed.simulations.flwr_home import CONNECTION_NAME

pytestmark = pytest.mark.slow


def test_three_hospitals_two_rounds(tmp_path, hospital_nodes, deploy_run_config):
    runs = tmp_path / "runs"
    cfg = {**deploy_run_config, "num-server-rounds": 2, "runs-dir": str(runs.resolve()),
           "run-name": "deploy", "min-train-nodes": 3, "min-evaluate-nodes": 3,
           "min-available-nodes": 3, "round-timeout": 900.0}
    with LocalDeployment(project_root(), sites=hospital_nodes,
                         log_dir=tmp_path / "logs") as deployment:
        result = deployment.run(cfg, timeout=1500).check()
    assert result.status == "finished:completed"
    run_dir = runs / "deploy"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("round_*.pt"))
    assert ckpts == ["round_001.pt", "round_002.pt"]
    assert (run_dir / "final_model.pt").is_file()
    df = pd.read_csv(run_dir / "metrics.csv")
    assert sorted(df["round"].unique()) == [1, 2]
    for rnd in (1, 2):
        rows = df[df["round"] == rnd]
        # the sites are reported under the names their node configs gave them
        assert set(rows["site"]) == {"global", "hosp-1", "hosp-2", "hosp-3"}
        sites = rows[rows.site != "global"]
        assert sites["train-loss"].notna().all() and (sites["num_images"] > 0).all()
        assert int(rows[rows.site == "global"]["sites-aggregated"].iloc[0]) == 3


def _run_id_of(deployment: LocalDeployment) -> int:
    res = deployment.flwr("ls", CONNECTION_NAME, "--format", "json")
    text = res.stdout[res.stdout.find("{"): res.stdout.rfind("}") + 1]
    runs = [r for r in json.loads(text)["runs"] if r["status"].startswith("running")]
    assert len(runs) == 1, runs
    return int(runs[0]["run-id"])


def test_server_stopped_after_round_one_resumes_at_round_two(
    tmp_path, hospital_nodes, deploy_run_config
):
    runs = tmp_path / "runs"
    run_dir = runs / "resume"
    cfg = {**deploy_run_config, "num-server-rounds": 2, "runs-dir": str(runs.resolve()),
           "run-name": "resume", "min-train-nodes": 2, "min-evaluate-nodes": 2,
           "min-available-nodes": 2, "round-timeout": 900.0, "fraction-evaluate": 0.0}
    with LocalDeployment(project_root(), sites=hospital_nodes[:2],
                         log_dir=tmp_path / "logs") as deployment:
        outcome: dict[str, object] = {}
        runner = threading.Thread(
            target=lambda: outcome.setdefault("first", deployment.run(cfg, timeout=1200)),
            daemon=True,
        )
        runner.start()
        first_ckpt = run_dir / "checkpoints" / "round_001.pt"
        deadline = time.monotonic() + 1200
        while not first_ckpt.exists() and runner.is_alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert first_ckpt.exists(), "round 1 never checkpointed"
        # The coordinating center goes down in round 2: stop the ServerApp run.
        stop = deployment.flwr("stop", str(_run_id_of(deployment)), CONNECTION_NAME)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        runner.join(timeout=300)
        assert not runner.is_alive()
        assert not (run_dir / "checkpoints" / "round_002.pt").exists()
        before = pd.read_csv(run_dir / "metrics.csv")
        assert set(before["round"]) == {1}

        first_written = first_ckpt.stat().st_mtime_ns
        deployment.run(cfg, timeout=1200).check()
    assert first_ckpt.stat().st_mtime_ns == first_written  # round 1 was not redone
    after = pd.read_csv(run_dir / "metrics.csv")
    assert sorted(after["round"].unique()) == [1, 2]
    # round 1 was not re-run: its rows are the same and appear once
    pd.testing.assert_frame_equal(
        after[after["round"] == 1].reset_index(drop=True)[before.columns],
        before.reset_index(drop=True),
    )
    assert (run_dir / "checkpoints" / "round_002.pt").exists()
