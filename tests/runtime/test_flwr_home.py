"""The private FLWR_HOME: its config.toml as flwr reads it, and the processes' environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from endofed.simulations.flwr_home import (
    SuperLinkConnection,
    private_environment,
    write_flower_config,
)


def test_flower_config_file_is_read_by_flwr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    write_flower_config(tmp_path, SuperLinkConnection("private-x", "127.0.0.1:45678"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    conn = read_superlink_connection()  # the default connection
    assert conn.name == "private-x"
    assert conn.address == "127.0.0.1:45678"
    assert conn.insecure is True


def test_flower_config_file_with_tls_root_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli.flower_config import read_superlink_connection

    ca = tmp_path / "ca.crt"
    ca.write_text("not read here")
    conn = SuperLinkConnection("tls", "127.0.0.1:1", insecure=False, root_certificates=ca)
    path = write_flower_config(tmp_path / "home", conn)
    assert path == tmp_path / "home" / "config.toml"
    assert f'root-certificates = "{ca}"' in path.read_text()
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    read = read_superlink_connection()
    assert read.insecure is False


def test_private_environment_scrubs_caller_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("FLWR_HOME", "/home/someone/.flwr")
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", bin_dir]))
    env = private_environment(tmp_path / "home", {"EXTRA": "1"})
    assert "RAY_ADDRESS" not in env
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["EXTRA"] == "1"
    assert env["PATH"].split(os.pathsep) == [bin_dir, "/usr/bin"]  # this venv first, once
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
