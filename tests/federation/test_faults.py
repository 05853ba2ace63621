"""Faults a real federation must survive: bad site folders and a hospital dropping out.

The pre-flight tests of `endofed site join` are fast (no Flower process starts); the
deployment scenarios are marked slow.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from flwr.common.config import parse_config_args

from endofed.server.run_state import load_checkpoint
from endofed.simulations.deployment import LocalDeployment
from endofed.simulations.federated import project_root

REPO = project_root()


def _join(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "endofed.cli", "site", "join", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def superlink_listener():
    """A TCP listener standing in for a SuperLink: records whether anything connected."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        sock.setblocking(False)
        yield sock


def _nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@pytest.mark.parametrize("kind", ["missing", "empty", "unreadable-images"])
def test_join_refuses_unusable_data_path_before_starting_supernode(
    tmp_path, superlink_listener, kind
):
    path = tmp_path / "hospital"
    if kind == "empty":
        path.mkdir()
    elif kind == "unreadable-images":
        (path / "images").mkdir(parents=True)
        (path / "images" / "frame1.png").write_bytes(b"not a png")
        (path / "images" / "frame2.jpg").write_bytes(b"")
    port = superlink_listener.getsockname()[1]
    t0 = time.monotonic()
    res = _join("--superlink", f"127.0.0.1:{port}", "--data-path", str(path),
                "--site-name", "st-mary", "--insecure")
    elapsed = time.monotonic() - t0
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(path) in res.stderr and "not started" in res.stderr
    if kind == "missing":
        assert "does not exist" in res.stderr
    assert elapsed < 45  # interpreter start + scan only, no retry loop
    assert _nobody_connected(superlink_listener)


def test_join_dry_run_composes_the_supernode_command(tmp_path, hospital_dirs):
    state = tmp_path / "state"
    res = _join("--superlink", "fl.center.example:9092", "--data-path", str(hospital_dirs[0]),
                "--site-name", "St Mary's", "--state-dir", str(state), "--dry-run", "--",
                "--max-retries", "5", "--root-certificates", "ca.pem")
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout.strip().splitlines()[-1])
    assert Path(argv[0]).name == "flower-supernode"
    assert Path(argv[0]).parent == Path(sys.executable).parent
    assert argv[argv.index("--superlink") + 1] == "fl.center.example:9092"
    assert "--insecure" not in argv  # TLS unless asked otherwise
    node_config = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert node_config == {"data-path": str(hospital_dirs[0].resolve()),
                           "site-name": "St Mary's", "state-dir": str(state.resolve())}
    assert argv[-4:] == ["--max-retries", "5", "--root-certificates", "ca.pem"]


def test_join_passes_the_sites_own_privacy_budget(tmp_path, hospital_dirs):
    res = _join("--superlink", "fl.center.example:9092", "--data-path", str(hospital_dirs[0]),
                "--site-name", "oslo", "--state-dir", str(tmp_path / "state"),
                "--dp-epsilon", "4", "--dp-delta", "1e-6", "--dry-run")
    assert res.returncode == 0, res.stderr
    argv = shlex.split(res.stdout.strip().splitlines()[-1])
    node_config = parse_config_args([argv[argv.index("--node-config") + 1]])
    assert node_config["dp-epsilon"] == 4.0 and node_config["dp-delta"] == 1e-6
    assert "new ledger" in res.stderr  # the budget the site joins with is shown


def test_join_refuses_an_invalid_privacy_setting(tmp_path, hospital_dirs, superlink_listener):
    port = superlink_listener.getsockname()[1]
    res = _join("--superlink", f"127.0.0.1:{port}", "--data-path", str(hospital_dirs[0]),
                "--site-name", "oslo", "--dp-epsilon", "4", "--dp-delta", "2", "--insecure")
    assert res.returncode == 2
    assert "dp-delta" in res.stderr and "not started" in res.stderr
    assert _nobody_connected(superlink_listener)


def _wait_for(path: Path, runner: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # its own waits add up to more than the 900 s default
def test_hospital_dies_mid_round_rejoins_and_bad_site_is_reported(
    tmp_path, hospital_nodes, deploy_run_config
):
    """4 SuperNodes: 3 hospitals + one whose data-path does not exist.

    hosp-3 is killed while round 2 trains: with min-train-nodes=2 the round completes
    with hosp-1 and hosp-2, the loss is logged as an event, and min-available-nodes=4
    does not deadlock the evaluation. hosp-3 restarts (new node id) and trains in
    round 3. The bad site's ClientApp refuses every round; the center records it under
    the site's name as "site data unusable", never the exception or the path (they stay
    in the hospital's own log).
    """
    runs = tmp_path / "runs"
    run_dir = runs / "faults"
    bad = tmp_path / "no-such-folder"
    nodes = [*hospital_nodes, {"data-path": str(bad), "site-name": "hosp-bad"}]
    cfg = {**deploy_run_config, "num-server-rounds": 3, "runs-dir": str(runs.resolve()),
           "run-name": "faults", "min-train-nodes": 2, "min-evaluate-nodes": 2,
           "min-available-nodes": 4, "round-timeout": 900.0}
    with LocalDeployment(project_root(), sites=nodes, log_dir=tmp_path / "logs") as dep:
        outcome: dict[str, object] = {}
        runner = threading.Thread(
            target=lambda: outcome.setdefault("run", dep.run(cfg, timeout=2400)), daemon=True
        )
        runner.start()
        _wait_for(run_dir / "checkpoints" / "round_001.pt", runner, 1200)
        time.sleep(3.0)  # round 2's train messages are out; ClientApps are starting
        dep.kill_supernode(2)
        killed_at = time.monotonic()
        dep.restart_supernode(2)
        _wait_for(run_dir / "checkpoints" / "round_002.pt", runner, 1200)
        round2_after_kill = time.monotonic() - killed_at
        runner.join(timeout=1800)
    result = outcome["run"]
    assert result.check().status == "finished:completed"
    # A node that goes offline is answered by the SuperLink (NODE_UNAVAILABLE) long
    # before round-timeout (900 s).
    assert round2_after_kill < 600

    df = pd.read_csv(run_dir / "metrics.csv")
    glob = df[df.site == "global"].set_index("round")
    assert int(glob.loc[1, "sites-aggregated"]) == 3
    assert int(glob.loc[2, "sites-aggregated"]) == 2
    assert int(glob.loc[3, "sites-aggregated"]) == 3
    r2 = df[df["round"] == 2].set_index("site")
    if "hosp-3" in r2.index:  # it may have evaluated after restarting, not trained
        assert pd.isna(r2.loc["hosp-3", "train-loss"])
    r3 = df[df["round"] == 3].set_index("site")
    assert r3.loc["hosp-3", "train-loss"] > 0  # the restarted node trained again

    state = load_checkpoint(run_dir / "checkpoints" / "round_003.pt")  # weights_only
    events = state["events"]
    lost = [e for e in events if e["round"] == 2 and e["site"] == "hosp-3"]
    assert lost and lost[0]["event"] in {"unavailable", "missing"}, events
    # The bad site is named (not node-<id>) and its refusal has a category; the
    # missing path and the exception stay in the hospital's own log.
    bad_events = [e for e in events if e["site"] == "hosp-bad"]
    assert {e["round"] for e in bad_events} == {1, 2, 3}, events
    assert all(e["event"] == "rejected" and e["reason"] == "refused: site data unusable"
               for e in bad_events), events
    assert not any(str(bad) in str(e.get("reason", "")) or "SiteConfigError" in str(e)
                   for e in events), events
    assert not any(str(e["site"]).startswith("node-") for e in events), events
    assert "hosp-bad" in (run_dir / "events.md").read_text()
    assert "did not reply" in result.stdout or "not aggregated" in result.stdout
