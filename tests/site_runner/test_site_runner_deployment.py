"""The site runner on a real loopback deployment: SuperLink, SuperNodes in
``--isolation process`` and one EndoFed site runner per SuperNode (no flwr-clientapp).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from endofed.privacy.audit_trail import AUDIT_TRAIL_NAME, AuditTrail
from endofed.simulations.deployment import LocalDeployment
from endofed.simulations.federated import project_root

# Each run starts a SuperLink, SuperNodes, site runners and a ServerApp: minutes on a
# loaded 2-core machine (the 3-round run took 410 s at load 10).
pytestmark = pytest.mark.slow


def _site_log(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "endofed.cli", "site", "log",
                           "--state-dir", str(state), *extra],
                          capture_output=True, text=True, timeout=120)


def _received(log_path: Path) -> list[str]:
    """Message types the SuperNode received, from its log."""
    return re.findall(r"Receiving: (\S+) message", log_path.read_text(errors="replace"))


def test_three_rounds_one_warm_runner_per_site_audited_with_site_threads(
    tmp_path, runner_hospitals, small_run
):
    runs = tmp_path / "runs"
    nodes = [{"data-path": str(runner_hospitals[0]), "site-name": "hosp-1", "threads": 2},
             {"data-path": str(runner_hospitals[1]), "site-name": "hosp-2"}]
    cfg = {**small_run, "num-server-rounds": 3, "runs-dir": str(runs.resolve()),
           "run-name": "warm", "min-train-nodes": 2, "min-evaluate-nodes": 2,
           "min-available-nodes": 2}
    with LocalDeployment(project_root(), sites=nodes, log_dir=tmp_path / "logs",
                         site_runner=True) as deployment:
        app_hash = deployment.approve_app()
        result = deployment.run(cfg, timeout=900).check()
        runner_pids = [deployment.runner_process(i).pid for i in range(2)]
        states = [deployment.site_state_dir(i) for i in range(2)]
        supernode_logs = [deployment.supernode_process(i).log_path for i in range(2)]
    assert result.status == "finished:completed"
    df = pd.read_csv(runs / "warm" / "metrics.csv")
    assert sorted(df["round"].unique()) == [1, 2, 3]
    glob = df[df.site == "global"]
    assert (glob["sites-aggregated"] == 2).all()  # both sites trained every round

    for i, state in enumerate(states):
        entries = AuditTrail(state / AUDIT_TRAIL_NAME).entries()
        # every message the SuperNode received has exactly one entry, in order
        assert [e["message_type"] for e in entries] == _received(supernode_logs[i])
        assert [e["message_type"] for e in entries].count("train") == 3
        assert {e["outcome"] for e in entries} == {"replied"}
        assert {e["app_hash"] for e in entries} == {app_hash}
        assert {e["round"] for e in entries} == {1, 2, 3}
        assert len({e["study_id"] for e in entries}) == 1 and entries[0]["study_id"]
        # one long-lived process served every message, and built the site once
        assert {e["pid"] for e in entries} == {runner_pids[i]}
        assert [e["runtime_builds"] for e in entries] == [1] * len(entries)
        assert entries[-1]["runtime_hits"] == len(entries) - 1
        train = [e for e in entries if e["message_type"] == "train"]
        for e in train:
            arrays = {k: v for k, v in e["sent"].items() if k.startswith("arrays/")}
            assert arrays and set(e["received"]) >= set(arrays)
            for key, item in arrays.items():  # same tensors back, same shapes
                assert item["shape"] == e["received"][key]
            assert e["sent_bytes"] == sum(v["bytes"] for v in e["sent"].values())
            assert re.fullmatch(r"[0-9a-f]{64}", e["payload_sha256"])
        assert len({e["payload_sha256"] for e in train}) == 3  # a new model each round
        # the site's threads, not the run config's threads=1
        assert {e["threads"] for e in entries} == {2 if i == 0 else _default_threads()}

        ok = _site_log(state, "--verify")
        assert ok.returncode == 0, ok.stdout + ok.stderr
    # one edited entry in the middle breaks the chain
    path = states[0] / AUDIT_TRAIL_NAME
    lines = path.read_text().splitlines()
    entry = json.loads(lines[3])
    entry["sent_bytes"] += 1
    lines[3] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    bad = _site_log(states[0], "--verify")
    assert bad.returncode == 1, bad.stdout + bad.stderr


def _default_threads() -> int:
    import os

    return len(os.sched_getaffinity(0))


def test_modified_app_is_refused_before_its_code_runs(
    tmp_path, runner_hospitals, small_run, write_app
):
    marker = tmp_path / "bundle-code-ran"
    # (`flwr run` checks a component statically: the module must assign `app` itself)
    original = write_app(tmp_path / "app-a",
                         "from endofed.client.app import app as _app\n\napp = _app\n")
    # The changed file records every process that imports it (its command line).
    modified = write_app(
        tmp_path / "app-b",
        "import sys\n"
        f"with open({str(marker)!r}, 'a') as fh:\n"
        "    fh.write(' '.join(sys.argv) + '\\n')\n"
        "from endofed.client.app import app as _app\n\napp = _app\n",
    )
    runs = tmp_path / "runs"
    nodes = [{"data-path": str(runner_hospitals[0]), "site-name": "hosp-1"},
             {"data-path": str(runner_hospitals[1]), "site-name": "hosp-2"}]
    cfg = {**small_run, "num-server-rounds": 1, "runs-dir": str(runs.resolve()),
           "run-name": "refused", "min-train-nodes": 1, "min-evaluate-nodes": 1,
           "min-available-nodes": 2}
    with LocalDeployment(modified, sites=nodes, log_dir=tmp_path / "logs",
                         site_runner=True) as deployment:
        good = deployment.approve_app([1], app_dir=original)
        bad = deployment.approve_app([0])  # hosp-1 reviewed and approved the new bundle
        assert good != bad  # one changed file, another hash
        result = deployment.run(cfg, timeout=600).check()
        states = [deployment.site_state_dir(i) for i in range(2)]
    assert result.status == "finished:completed"
    # No process imported the changed module: not the site runners, not the
    # SuperNodes (and nothing at the coordinator: flwr run checks components statically).
    assert not marker.exists(), marker.read_text()
    assert "site refused the app: hosp-2" in result.stdout + result.stderr
    df = pd.read_csv(runs / "refused" / "metrics.csv")
    assert int(df[df.site == "global"]["sites-aggregated"].iloc[0]) == 1
    assert set(df[df["train-loss"].notna()].site) == {"global", "hosp-1"}
    refused = AuditTrail(states[1] / AUDIT_TRAIL_NAME).entries()
    assert refused and {e["outcome"] for e in refused} == {"refused"}
    assert {e["app_hash"] for e in refused} == {bad}
    assert all(e["sent"] == {} and e["sent_bytes"] == 0 for e in refused)
    served = AuditTrail(states[0] / AUDIT_TRAIL_NAME).entries()
    assert {e["outcome"] for e in served} == {"replied"}
