"""Flower's Ray simulation runtime on a private SuperLink (``--simulation``).

Example::

    with LocalSimulationRuntime(app_dir, num_supernodes=3, num_cpus_per_client=1) as rt:
        result = rt.run({"num-server-rounds": 2}, timeout=300).check()
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from endofed.simulations.loopback import LOOPBACK
from endofed.simulations.run_config import ConfigValue, format_run_config
from endofed.simulations.superlink import PrivateSuperLink


def simulation_federation_config(
    *,
    num_supernodes: int,
    num_cpus_per_client: float | None = None,
    num_gpus_per_client: float | None = None,
    backend_num_cpus: int | None = None,
    backend_num_gpus: int | None = None,
    backend_logging_level: str | None = None,
    verbose: bool | None = None,
) -> dict[str, ConfigValue]:
    """flwr 1.41 ``--federation-config`` keys for a Ray simulation (None = flwr default)."""
    cfg: dict[str, ConfigValue] = {"num-supernodes": int(num_supernodes)}
    if num_cpus_per_client is not None:
        if num_cpus_per_client <= 0:
            raise ValueError(f"num_cpus_per_client must be > 0, got {num_cpus_per_client}")
        if float(num_cpus_per_client).is_integer():
            cfg["client-resources-num-cpus"] = int(num_cpus_per_client)
        else:  # flwr's field is an int: scale Ray's logical CPUs instead
            cpus = backend_num_cpus or os.cpu_count() or 1
            backend_num_cpus = max(1, math.ceil(cpus / num_cpus_per_client - 1e-9))
            cfg["client-resources-num-cpus"] = 1
    if num_gpus_per_client is not None:
        cfg["client-resources-num-gpus"] = float(num_gpus_per_client)
    if backend_num_cpus is not None:
        cfg["init-args-num-cpus"] = int(backend_num_cpus)
    if backend_num_gpus is not None:
        cfg["init-args-num-gpus"] = int(backend_num_gpus)
    if backend_logging_level is not None:
        cfg["init-args-logging-level"] = backend_logging_level
    if verbose is not None:
        cfg["verbose"] = bool(verbose)
    return cfg


def format_federation_config(config: Mapping[str, ConfigValue]) -> str:
    """Format simulation settings for ``flwr run --federation-config``.

    Keys are the ``SimulationConfig`` fields of flwr 1.41 with ``-`` for ``_``:
    ``num-supernodes``, ``client-resources-num-cpus`` (int), ``client-resources-num-
    gpus`` (float), ``backend``, ``verbose``, ``init-args-num-cpus``,
    ``init-args-num-gpus``, ``init-args-logging-level``, ``init-args-log-to-driver``.
    """
    return format_run_config(config)


class LocalSimulationRuntime(PrivateSuperLink):
    """A private ``flower-superlink --simulation`` running ``num_supernodes`` virtual nodes.

    Virtual node ``i`` gets node config ``partition-id=i``, ``num-partitions=N`` (the
    simulation runtime sets exactly these two keys; other per-site settings must come
    from the run config). Resources follow flwr 1.41's ``SimulationConfig``:
    ``num_cpus_per_client`` is Ray's per-ClientApp CPU reservation, so at most
    ``backend_num_cpus / num_cpus_per_client`` ClientApps run at once. flwr only
    accepts whole CPUs; a fraction (e.g. ``0.5``) is realised by advertising
    ``ceil(cpus / fraction)`` logical CPUs to Ray and reserving one per ClientApp.

    Args:
        app_dir: directory with the app's ``pyproject.toml``.
        num_supernodes: number of virtual SuperNodes.
        num_cpus_per_client: CPUs reserved per ClientApp (flwr default: 2).
        num_gpus_per_client: GPU fraction per ClientApp (default 0).
        backend_num_cpus: CPUs Ray may use (default: all, ``os.cpu_count()``).
        backend_num_gpus: GPUs Ray may use.
        backend_logging_level: Ray's logging level (flwr default ``"WARNING"``).
        verbose: verbose simulation-runtime logs.
        env: extra environment for all processes.
        log_dir: where process and run logs go (default: a temp dir removed on exit).
        cwd: working directory of all processes, hence of the ServerApp and
            ClientApps (default: ``app_dir``).
        startup_timeout: seconds the SuperLink may take to answer ``/health``.
        keep_temp: keep the temporary ``FLWR_HOME`` (and default log dir) on exit.
    """

    def __init__(
        self,
        app_dir: Path,
        *,
        num_supernodes: int,
        num_cpus_per_client: float | None = None,
        num_gpus_per_client: float | None = None,
        backend_num_cpus: int | None = None,
        backend_num_gpus: int | None = None,
        backend_logging_level: str | None = None,
        verbose: bool | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        cwd: Path | None = None,
        startup_timeout: float = 60.0,
        keep_temp: bool = False,
    ) -> None:
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
        self.federation_config = simulation_federation_config(
            num_supernodes=num_supernodes,
            num_cpus_per_client=num_cpus_per_client,
            num_gpus_per_client=num_gpus_per_client,
            backend_num_cpus=backend_num_cpus,
            backend_num_gpus=backend_num_gpus,
            backend_logging_level=backend_logging_level,
            verbose=verbose,
        )
        self.num_supernodes = num_supernodes
        super().__init__(
            app_dir, env=env, log_dir=log_dir, cwd=cwd, startup_timeout=startup_timeout,
            keep_temp=keep_temp,
        )  # fmt: skip

    def _superlink_args(self, port: int) -> list[str]:
        return [
            "--insecure", "--simulation", "--disable-runtime-dependency-installation",
            "--host", LOOPBACK, "--port", str(port),
        ]  # fmt: skip

    def _extra_run_args(self) -> list[str]:
        return ["--federation-config", format_federation_config(self.federation_config)]

    def _start(self) -> None:
        self._start_superlink()
