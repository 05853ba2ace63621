"""A real Flower simulation of the smoke app on a private SuperLink, and its resources."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from endofed.simulations.flwr_run import FlowerRunError, FlowerRunTimeout
from endofed.simulations.simulation_runtime import (
    LocalSimulationRuntime,
    format_federation_config,
    simulation_federation_config,
)


def expected_fedavg(num_nodes: int, rounds: int, delta: float = 1.0) -> float:
    """Closed-form FedAvg of the smoke app, computed independently of the app.

    Node p returns ``w + (p + 1) * delta`` with weight ``10 * (p + 1)``, so every round
    moves each coordinate by ``sum((p+1)^2) / sum(p+1) * delta``.
    """
    ks = range(1, num_nodes + 1)
    return rounds * delta * sum(k * k for k in ks) / sum(ks)


def cmdline(pid: int) -> str:
    """Command line of ``pid`` ('' if gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


class _Watcher:
    """Records every live process of a runtime (pid -> cmdline) while a run goes on."""

    def __init__(self, runtime: LocalSimulationRuntime) -> None:
        self.runtime, self.seen, self._stop = runtime, {}, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in self.runtime.alive_processes():
                self.seen.setdefault(pid, cmdline(pid))
            time.sleep(0.3)

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_three_node_fedavg_and_clean_shutdown(smoke_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "server-out.json"
    home = tmp_path / "home"  # stands in for the user's home: ~/.flwr must not appear
    home.mkdir()
    runtime = LocalSimulationRuntime(
        smoke_app, num_supernodes=3, num_cpus_per_client=1, env={"HOME": str(home)},
        log_dir=tmp_path / "logs",
    )  # fmt: skip
    with runtime, _Watcher(runtime) as watcher:
        probe = tmp_path / "probe"
        probe.mkdir()
        result = runtime.run(
            {"num-server-rounds": 2, "min-nodes": 3, "out-path": str(out), "probe-dir": str(probe)},
            timeout=240,
        ).check()
        temp_dir = runtime.temp_dir
        superlink_pid = runtime.superlink.pid if runtime.superlink else -1

    assert result.returncode == 0 and result.status == "finished:completed"
    assert result.run_id is not None and f"run {result.run_id}" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["run-id"] == result.run_id
    # 3 distinct nodes (partitions 0, 1, 2 of 3) answered in both rounds.
    for rnd in ("1", "2"):
        parts = summary["participants"][rnd]
        assert [p["partition-id"] for p in parts] == [0, 1, 2]
        assert {p["num-partitions"] for p in parts} == {3}
        assert len({p["node-id"] for p in parts}) == 3
    want = expected_fedavg(num_nodes=3, rounds=2)  # 2 * 14/6
    assert summary["final-arrays"] == [pytest.approx([want, want])]
    # Working directory is the app dir; the code runs from the FAB installed in the
    # private FLWR_HOME.
    assert Path(summary["cwd"]) == smoke_app
    assert Path(summary["module-file"]).is_relative_to(temp_dir / "flwr_home" / "apps")
    for pid in range(3):  # the ClientApps (Ray actors) share that working directory
        assert Path(json.loads((probe / f"client-{pid}.json").read_text())["cwd"]) == smoke_app

    # Nothing survives: the SuperLink, SuperExec, flwr-simulation, Ray processes.
    cmds = " | ".join(watcher.seen.values())
    assert "flower-superlink" in cmds and "flwr-simulation" in cmds, cmds
    assert superlink_pid in watcher.seen
    leftovers = {pid: cmd for pid, cmd in watcher.seen.items() if running(pid)}
    assert leftovers == {}
    assert runtime.alive_processes() == {}
    assert not temp_dir.exists()
    assert not (home / ".flwr").exists()
    assert (tmp_path / "logs" / "superlink.log").is_file()  # caller's log dir is kept


def test_timed_out_run_is_stopped_and_leaves_nothing_behind(smoke_app: Path) -> None:
    runtime = LocalSimulationRuntime(smoke_app, num_supernodes=2, num_cpus_per_client=1)
    with runtime, _Watcher(runtime) as watcher:
        start = time.monotonic()
        with pytest.raises(FlowerRunTimeout, match="did not finish within 6"):
            runtime.run({"sleep-s": 300.0}, timeout=6)
        assert time.monotonic() - start < 60
        assert runtime.superlink is not None and runtime.superlink.running()
    assert any("flwr-simulation" in cmd for cmd in watcher.seen.values())
    assert {pid for pid in watcher.seen if running(pid)} == set()
    assert runtime.alive_processes() == {}


@pytest.mark.slow
def test_submitted_run_and_failed_run(smoke_app: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    runtime = LocalSimulationRuntime(smoke_app, num_supernodes=2, num_cpus_per_client=1)
    with runtime, _Watcher(runtime) as watcher:
        # Without --stream the CLI returns once the run is submitted; run() polls.
        submitted = runtime.run(
            {"num-server-rounds": 1, "out-path": str(out)}, stream=False, timeout=180
        ).check()
        assert submitted.status == "finished:completed"
        want = expected_fedavg(num_nodes=2, rounds=1)
        assert json.loads(out.read_text())["final-arrays"] == [pytest.approx([want, want])]

        failed = runtime.run({"fail": True}, timeout=180)
    assert failed.returncode == 0  # `flwr run --stream` exits 0 whatever the run did
    assert failed.status == "finished:failed"
    assert not failed.ok
    assert "failure requested by run config" in failed.stdout
    with pytest.raises(FlowerRunError, match="status finished:failed"):
        failed.check()
    assert {pid for pid in watcher.seen if running(pid)} == set()


def test_app_dir_without_pyproject_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pyproject.toml"):
        LocalSimulationRuntime(tmp_path, num_supernodes=2)


def test_federation_config_integer_and_fractional_cpus() -> None:
    cfg = simulation_federation_config(num_supernodes=3, num_cpus_per_client=1)
    assert cfg == {"num-supernodes": 3, "client-resources-num-cpus": 1}
    # flwr only takes whole CPUs per ClientApp: 0.5 of 2 CPUs -> 4 logical CPUs, 1 each.
    cfg = simulation_federation_config(
        num_supernodes=5, num_cpus_per_client=0.5, backend_num_cpus=2, verbose=True
    )
    assert cfg["client-resources-num-cpus"] == 1
    assert cfg["init-args-num-cpus"] == 4
    assert cfg["verbose"] is True
    with pytest.raises(ValueError):
        simulation_federation_config(num_supernodes=2, num_cpus_per_client=0)


def test_federation_config_is_accepted_by_flwr() -> None:
    from flwr.supercore.utils import simulation_config_from_json

    cfg = simulation_federation_config(
        num_supernodes=4, num_cpus_per_client=1, num_gpus_per_client=0.25,
        backend_num_cpus=2, backend_logging_level="ERROR",
    )  # fmt: skip
    # Same conversion as `flwr run --federation-config` (flwr/cli/run/run.py).
    parsed = parse_config_args([format_federation_config(cfg)])
    proto = simulation_config_from_json({k.replace("-", "_"): v for k, v in parsed.items()})
    assert proto.num_supernodes == 4
    assert proto.client_resources_num_cpus == 1
    assert proto.client_resources_num_gpus == pytest.approx(0.25)
    assert proto.init_args_num_cpus == 2
    assert proto.init_args_logging_level == "ERROR"


def test_app_with_legacy_federations_section_is_rejected_untouched(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.flwr.federations]\ndefault = "local"\n')
    with pytest.raises(ValueError, match="legacy"):
        LocalSimulationRuntime(tmp_path, num_supernodes=2)
    assert pyproject.read_text() == '[tool.flwr.federations]\ndefault = "local"\n'
