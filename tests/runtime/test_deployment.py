"""SuperLink + SuperNodes on loopback, each SuperNode with its own node config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from endofed.simulations.deployment import LocalDeployment


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _sites(n: int) -> list[dict[str, str | int]]:
    return [
        {"partition-id": i, "num-partitions": n, "site-name": f"site-{i}",
         "data-path": f"/data/hospital {i}"}
        for i in range(n)
    ]  # fmt: skip


def test_supernodes_register_die_and_come_back(smoke_app: Path, tmp_path: Path) -> None:
    deployment = LocalDeployment(smoke_app, sites=_sites(2), log_dir=tmp_path / "logs")
    with deployment:
        online = deployment.online_nodes()
        assert len(online) == 2
        pids = [p.pid for p in deployment.processes]
        first_ids = {n["node-id"] for n in online}

        deployment.kill_supernode(1)
        assert len(deployment.online_nodes()) == 1
        deployment.restart_supernode(1)
        online = deployment.online_nodes()
        assert len(online) == 2
        assert len({n["node-id"] for n in online} - first_ids) == 1  # a new node id
        pids += [p.pid for p in deployment.processes]
        superlink_args = deployment.superlink.argv if deployment.superlink else []
        node_argv = [p.argv for p in deployment.processes if p.name.startswith("supernode-")]
    assert "--simulation" not in superlink_args
    assert deployment.alive_processes() == {}
    assert not any(_running(pid) for pid in pids)
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["superlink.log", "supernode-0.log", "supernode-1.1.log", "supernode-1.log"]
    # Each SuperNode got its own site's node config, in a form flwr parses back exactly.
    for i, site in enumerate(_sites(2)):
        argv = node_argv[i]
        assert parse_config_args([argv[argv.index("--node-config") + 1]]) == site


@pytest.mark.slow
def test_two_rounds_on_three_supernodes(smoke_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "server-out.json"
    with LocalDeployment(smoke_app, sites=_sites(3)) as deployment:
        result = deployment.run(
            {"min-nodes": 3, "num-server-rounds": 2, "fraction-evaluate": 0.0,
             "out-path": str(out)},
            timeout=300,
        ).check()  # fmt: skip
    assert result.status == "finished:completed"
    summary = json.loads(out.read_text())
    for rnd in ("1", "2"):
        assert [p["partition-id"] for p in summary["participants"][rnd]] == [0, 1, 2]
    want = 2 * (1 + 4 + 9) / (1 + 2 + 3)  # FedAvg of (p+1) updates weighted by 10(p+1)
    assert summary["final-arrays"] == [pytest.approx([want, want])]
    assert Path(summary["cwd"]) == smoke_app
    assert deployment.alive_processes() == {}
