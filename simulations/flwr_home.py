"""A private ``FLWR_HOME``: its one SuperLink connection and the processes' environment.

The ``flwr`` CLI reads its SuperLink connections from ``$FLWR_HOME/config.toml``
(``~/.flwr`` by default) and the SuperLink/SuperExec install FABs under
``$FLWR_HOME/apps``. EndoFed always points ``FLWR_HOME`` at a private temporary
directory so it never reads or writes the user's ``~/.flwr``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from endofed.shared.util.atomic import atomic_write_text
from endofed.simulations.run_config import check_config_key, toml_value

#: Name of the only (default) connection in a private ``config.toml``.
CONNECTION_NAME = "endofed-private"
#: Caller variables our processes must not see: Ray must not join a cluster named by
#: the caller's environment, and the CLI must not read the caller's ``FLWR_HOME``.
SCRUBBED_ENV = ("RAY_ADDRESS", "FLWR_HOME")


@dataclass(frozen=True)
class SuperLinkConnection:
    """One ``[superlink.<name>]`` entry of the Flower config file."""

    name: str
    address: str
    insecure: bool = True
    root_certificates: Path | None = None


def write_flower_config(home: Path, connection: SuperLinkConnection) -> Path:
    """Write ``home/config.toml`` with ``connection`` as the only (default) connection."""
    check_config_key(connection.name)
    lines = [
        "[superlink]",
        f"default = {toml_value(connection.name)}",
        "",
        f"[superlink.{connection.name}]",
        f"address = {toml_value(connection.address)}",
        f"insecure = {toml_value(connection.insecure)}",
    ]
    if connection.root_certificates is not None:
        lines.append(f"root-certificates = {toml_value(str(connection.root_certificates))}")
    return atomic_write_text(Path(home) / "config.toml", "\n".join(lines) + "\n")


def private_environment(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes that use the private ``FLWR_HOME`` ``home``.

    The caller's environment without :data:`SCRUBBED_ENV`, plus ``extra``; this venv's
    scripts first on ``PATH`` (``flower-superlink`` starts ``flower-superexec``, and
    Ray its workers, by name, also when the venv is not activated); no runtime
    dependency installation, update check or telemetry; unbuffered Python output.
    """
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(extra or {})
    bin_dir = str(Path(sys.executable).parent)
    others = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *others])
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
