"""Run the EndoFed Flower apps as a local multi-hospital simulation from Python."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endofed.simulations.flwr_run import CompletedRun
from endofed.simulations.resources import (
    client_gpu_share,
    cuda_device_count,
    describe_client_device,
)
from endofed.simulations.simulation_runtime import LocalSimulationRuntime

log = logging.getLogger(__name__)


def project_root() -> Path:
    """The directory holding EndoFed's ``pyproject.toml`` (the Flower app)."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.exists():
        raise FileNotFoundError(
            f"{pyproject} not found: run simulations from a source checkout of EndoFed "
            "(pip install -e .), the Flower app is built from it"
        )
    return root


def default_run_config(app_dir: Path | None = None) -> dict[str, Any]:
    """The run-config defaults declared in ``[tool.flwr.app.config]``."""
    data = tomllib.loads(((app_dir or project_root()) / "pyproject.toml").read_text())
    return dict(data["tool"]["flwr"]["app"]["config"])


@dataclass
class SimulationResult:
    """A finished simulated federation."""

    run_dir: Path
    completed: CompletedRun


def run_simulation(
    run_config: Mapping[str, Any],
    *,
    num_sites: int,
    runs_dir: Path,
    run_name: str,
    num_cpus_per_client: float = 1.0,
    num_gpus_per_client: float | None = None,
    timeout: float | None = None,
    log_dir: Path | None = None,
) -> SimulationResult:
    """Simulate ``num_sites`` hospitals on a private SuperLink and wait for the run.

    ``runs_dir`` is made absolute because the ServerApp runs in another process. With
    CUDA present the ClientApps get a GPU share (``num_gpus_per_client``, default: an
    equal share for all, :func:`~endofed.simulations.resources.client_gpu_share`).
    """
    runs_dir = Path(runs_dir).expanduser().resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(run_config)
    cfg.update({"runs-dir": str(runs_dir), "run-name": run_name})
    cfg.setdefault("min-train-nodes", min(num_sites, int(cfg.get("min-train-nodes", 2))))
    cfg.setdefault("min-evaluate-nodes", min(num_sites, int(cfg.get("min-evaluate-nodes", 2))))
    cfg.setdefault("min-available-nodes", num_sites)
    log_dir = Path(log_dir) if log_dir else runs_dir / run_name / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    devices = cuda_device_count()
    gpu_share = client_gpu_share(num_sites, devices, num_gpus_per_client)
    log.info("federated run %s: %d ClientApps, %g CPU each, %s", run_name, num_sites,
             num_cpus_per_client, describe_client_device(gpu_share, devices))
    with LocalSimulationRuntime(
        project_root(),
        num_supernodes=num_sites,
        num_cpus_per_client=num_cpus_per_client,
        num_gpus_per_client=gpu_share,
        backend_num_gpus=devices if gpu_share else None,
        log_dir=log_dir,
        env={"PYTHONUNBUFFERED": "1"},
    ) as runtime:
        completed = runtime.run(cfg, timeout=timeout)
    run_dir = runs_dir / run_name
    if not completed.ok or not (run_dir / "report.md").exists():
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-40:])
        raise RuntimeError(
            f"simulation {run_name} did not complete (exit {completed.returncode}, "
            f"status {completed.status}); logs in {log_dir}\n{tail}"
        )
    return SimulationResult(run_dir=run_dir, completed=completed)
